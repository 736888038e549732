"""Recognisers for the checkpoint layouts of other SSL code bases.

Each recogniser looks at a file's dict and, if it is its layout, returns a :class:`Layout`: the
branches the file holds (as :class:`~.assemble.Parts`, keys renamed to torchvision/timm names),
the branch that method's own evaluation uses, what Z is, and the architecture facts the method's
code fixes (stem, head activation). Nothing here builds a model; :func:`~.assemble.assemble` does.

========== ===================================================== =================== ===========================================
format     keys (after ``module.``/``_orig_mod.`` are stripped)  default branch      Z
========== ===================================================== =================== ===========================================
solo-learn ``backbone.*`` (older: ``encoder.*``), ``projector.*`` online              projector output (DINO: ``head.mlp`` output)
           ``momentum_*``, ``predictor.*`` + args.json
resa       ``encoder.*``, ``projector.*``, ``momentum_encoder.*``, momentum            projector output after the affine-free BN
           ``momentum_projector.*``, ``predictor.*`` (a projector
           not ending in an affine-free BN: a plain state dict)
mocov3     ``base_encoder.*`` (projector in ``fc``/``head``),     online (base enc.)  projector output after the affine-free BN
           ``momentum_encoder.*``, ``predictor.*``
swav       ResNet keys, ``projection_head.*``, ``prototypes.*``  online              projection head output, before L2 normalisation
dino       ``student``/``teacher``: ``backbone.*``, ``head.mlp.*`` teacher             bottleneck (``head.mlp`` output), before L2
           (GELU), ``head.last_layer.*``                                             normalisation and the weight-normed last layer
barlowtwins ``backbone.*``, ``projector.*``, ``bn.*``            online              projector output after the affine-free ``bn``
vicreg     ``backbone.*``, ``projector.*`` (+ the optimizer's    online              projector output
           ``exclude_bias_and_norm``)
lightly    ``backbone.0``..``backbone.7`` (ResNet children),     online              projection head output
           ``projection_head.layers.*``, ``*_momentum.*``
state-dict torchvision/timm ResNet or ViT keys (H only), or      online              projector output
           ``backbone.*`` + ``projector.*``
========== ===================================================== =================== ===========================================
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ..errors import ArchitectureMismatchError, CheckpointError
from ..models.backbones import RESNET_LAYOUTS
from .assemble import Hints, Parts, is_resnet, is_vit, select, strip_prefixes
from .files import KNOWN_FORMATS, MissingObject

Z_PROJECTOR = "projector output"
Z_AFFINE_FREE_BN = "projector output after its affine-free BatchNorm"
Z_DINO = ("bottleneck output of the head's MLP (head.mlp), before the L2 normalisation and the "
          "weight-normed last_layer that produce DINO's prototype scores")


@dataclass
class Layout:
    """A recognised file: its branches, the default one, and what its format fixes."""

    format: str
    branches: dict[str, Parts]
    default: str
    hints: Hints = field(default_factory=Hints)
    z: str = Z_PROJECTOR
    facts: list[str] = field(default_factory=list)
    epoch: int | None = None
    step: int | None = None
    method: str | None = None
    dataset: str | None = None
    run: str | None = None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _tensors(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _weights(raw: Mapping) -> dict[str, torch.Tensor] | None:
    """The state dict inside a file: the file itself or its ``state_dict``/``model`` entry."""
    for key in ("state_dict", "model", "model_state_dict", "net"):
        if _tensors(raw.get(key)):
            return strip_prefixes(raw[key])
    if _tensors(raw):
        return strip_prefixes(raw)
    nested = [value for value in raw.values() if _tensors(value)]
    if len(nested) == 1:  # one dict of weights under a name of the script's choosing
        return strip_prefixes(nested[0])  # (lightly's tutorial: {"resnet18_parameters": ...})
    return None


def _without(state: Mapping[str, torch.Tensor], *prefixes: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith(prefixes)}


def _head_keys(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor] | None:
    """A flat sequential head under ``prefix`` (None when absent). A lone ``nn.Linear`` stored
    without an index (DINO's ``head.mlp`` with one layer) becomes layer 0."""
    head = select(state, prefix)
    if not head:
        return None
    if set(head) <= {"weight", "bias"}:
        return {f"0.{k}": v for k, v in head.items()}
    return head


def _encoder(state: Mapping[str, torch.Tensor], prefix: str, drop: tuple[str, ...] = ("fc.", "head.")) -> dict[str, torch.Tensor]:
    """An encoder's keys under ``prefix``, without a classifier (``fc``/``head``)."""
    return _without(select(state, prefix), *drop)


# ---------------------------------------------------------------------------------------------
# solo-learn
_SOLO_EPOCH = re.compile(r"-ep=(\d+)\.ckpt$")


def solo_learn_epoch(name: str) -> int | None:
    """Epochs of training behind the solo-learn checkpoint file ``name`` (``...-ep=N.ckpt``), or None.

    solo-learn's ``Checkpointer`` saves at the end of each training epoch and names the file with
    Lightning's 0-based ``trainer.current_epoch`` of the epoch just finished
    (``solo/utils/checkpointer.py``): ``ep=0`` holds the weights after one epoch, ``ep=N`` after
    N + 1. clusterprobe counts epochs done (its own ``epoch_0000.pt`` is the initialisation, and
    the other code bases save ``epoch + 1``), so this returns N + 1: a solo-learn run then sits on
    the same epoch axis as the others, and its first file is never taken for the initialisation.
    """
    match = _SOLO_EPOCH.search(name)
    return int(match.group(1)) + 1 if match else None


def read_solo_learn_args(args_path: Path) -> dict[str, Any]:
    """Read solo-learn's args.json, old flat layout or newer nested (hydra) layout alike.

    Returns ``method``, ``backbone`` (name), ``dataset`` and projector sizes where present.
    """
    try:
        args = json.loads(Path(args_path).read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"solo-learn checkpoints need the args.json that solo-learn writes beside them; "
            f"{args_path} does not exist. Pass its location with args_json= (--args-json)."
        ) from None
    except ValueError as error:
        raise CheckpointError(f"{args_path} is not valid JSON: {error}") from None
    backbone = args.get("backbone")
    if isinstance(backbone, Mapping):
        backbone = backbone.get("name")
    data = args.get("data") if isinstance(args.get("data"), Mapping) else {}
    method_kwargs = args.get("method_kwargs") if isinstance(args.get("method_kwargs"), Mapping) else args
    return {
        "method": args.get("method"),
        "backbone": backbone,
        "dataset": data.get("dataset", args.get("dataset")),
        "proj_hidden_dim": method_kwargs.get("proj_hidden_dim"),
        "proj_output_dim": method_kwargs.get("proj_output_dim"),
        "name": args.get("name"),
        "nested": isinstance(args.get("backbone"), Mapping),  # solo-learn >= 1.0.6 (omegaconf)
    }


def _is_solo_learn(raw: Mapping, path: Path, args_json: Path | None) -> bool:
    if not isinstance(raw.get("state_dict"), Mapping):
        return False
    if "pytorch-lightning_version" in raw:
        return True
    keys = strip_prefixes(raw["state_dict"])
    return (any(k.startswith("backbone.") for k in keys)
            and ((path.parent / "args.json").exists() or args_json is not None))


def solo_learn(raw: Mapping, path: Path, args_json: Path | None) -> Layout:
    args = read_solo_learn_args(Path(args_json) if args_json else path.parent / "args.json")
    state = strip_prefixes(raw["state_dict"])
    if not any(k.startswith("backbone.") for k in state) and any(k.startswith("encoder.") for k in state):
        # solo-learn before 1.0 called the backbone "encoder"
        state = {re.sub(r"^(momentum_)?encoder\.", lambda m: f"{m.group(1) or ''}backbone.", k): v
                 for k, v in state.items()}
    method = args.get("method")
    dino_head = any(k.startswith("head.mlp.") for k in state)
    # solo-learn's heads use ReLU except DINO's head and VIbCReg's projector (solo/methods/vibcreg.py)
    gelu = dino_head or str(method).lower() == "vibcreg"
    if any(k.startswith("projector.") and k.endswith(".running_wm") for k in state):
        raise CheckpointError(
            f"{path}: the projector ends in VIbCReg's IterNorm (projector.*.running_wm, "
            "method_kwargs.iternorm), which clusterprobe does not rebuild; H loads from a copy of the "
            "file without the projector.* keys."
        )
    hints = Hints(stem_padding=2, stem_note="solo-learn's CIFAR stem", activation="gelu" if gelu else "relu")
    name = args.get("backbone")
    if name and str(name).startswith("vit"):
        hints.vit_arch = str(name)
        if str(method).lower() in ("mocov3", "mae") and name in ("vit_tiny", "vit_small"):
            if args.get("nested") or str(method).lower() == "mae":
                # solo-learn builds these from its vit_mocov3.py / vit_mae.py: 12 heads, not timm's 3 / 6
                hints.vit_heads = 12
            else:
                # a flat args.json: releases <= 1.0.5 built MoCo v3's ViTs with timm's heads, master
                # from July 2022 with 12; the weights cannot tell, so the heads are an assumption
                hints.vit_arch = None
    elif name:
        if name not in RESNET_LAYOUTS:
            raise CheckpointError(
                f"args.json names backbone {name!r}; clusterprobe rebuilds "
                f"{', '.join(RESNET_LAYOUTS)} and ViTs."
            )
        hints.backbone = name
    if args.get("dataset"):
        hints.cifar_stem = str(args["dataset"]).lower() in ("cifar10", "cifar100")
    head = "head.mlp." if dino_head else "projector."
    branches = {"online": Parts(_encoder(state, "backbone."), _head_keys(state, head),
                                _head_keys(state, "predictor."))}
    if any(k.startswith("momentum_backbone.") for k in state):
        branches["momentum"] = Parts(_encoder(state, "momentum_backbone."),
                                     _head_keys(state, "momentum_head.mlp." if dino_head else "momentum_projector."))
    out = args.get("proj_output_dim")
    projector = branches["online"].projector
    if projector and out is not None and not dino_head:
        linears = sorted((int(k.split(".")[0]), v) for k, v in projector.items() if k.endswith("weight") and v.ndim == 2)
        if linears and int(linears[-1][1].shape[0]) != int(out):
            raise ArchitectureMismatchError(
                f"args.json says the projector outputs {out}-d but the weights in {path} give "
                f"{int(linears[-1][1].shape[0])}-d; the checkpoint and args.json do not belong together."
            )
    epoch = solo_learn_epoch(path.name)
    if epoch is None and _int(raw.get("epoch")) is not None:
        epoch = _int(raw.get("epoch")) + 1  # Lightning's 0-based current_epoch, saved at its end
    return Layout("solo-learn", branches, "online", hints, Z_DINO if dino_head else Z_PROJECTOR,
                  ["branches: online = backbone/projector, momentum = momentum_backbone/momentum_projector "
                   "(solo-learn's linear evaluation uses the online backbone)"],
                  epoch=epoch, step=_int(raw.get("global_step")), method=method,
                  dataset=args.get("dataset"), run=args.get("name"))


# ---------------------------------------------------------------------------------------------
# official code bases
def resa(raw: Mapping, state: Mapping[str, torch.Tensor]) -> Layout | None:
    if not (any(k.startswith("encoder.") for k in state) and any(k.startswith("projector.") for k in state)):
        return None
    branches = {"online": Parts(_encoder(state, "encoder."), _head_keys(state, "projector."),
                                _head_keys(state, "predictor."))}
    if any(k.startswith("momentum_encoder.") for k in state):
        branches["momentum"] = Parts(_encoder(state, "momentum_encoder."), _head_keys(state, "momentum_projector."))
    projector = branches["online"].projector or {}
    last = max((int(k.split(".")[0]) for k in projector if k.split(".")[0].isdigit()), default=None)
    if last is None or f"{last}.running_mean" not in projector or f"{last}.weight" in projector:
        # ReSA's projector always ends in BatchNorm1d(emb, affine=False): this is another code
        # base's encoder + projector, whose stem and head activation ReSA's code does not tell
        return Layout("state-dict", branches, "online", Hints(), Z_PROJECTOR,
                      ["encoder.* + projector.*, but the projector does not end in ReSA's affine-free "
                       "BatchNorm: read as a plain encoder + projector, not as ReSA's layout"],
                      epoch=_int(raw.get("epoch")))
    return Layout(
        "resa", branches, "momentum" if "momentum" in branches else "online",
        Hints(stem_padding=2, activation="relu",
              stem_note="ReSA's code zero-pads the input by 1 pixel before a padding-1 conv"),
        Z_AFFINE_FREE_BN,
        ["branches: online = encoder/projector/predictor, momentum = momentum_encoder/momentum_projector "
         "(ReSA evaluates the momentum encoder)"],
        epoch=_int(raw.get("epoch")), method="resa",
    )


def mocov3(raw: Mapping, state: Mapping[str, torch.Tensor]) -> Layout | None:
    if not any(k.startswith("base_encoder.") for k in state):
        return None

    def branch(prefix: str, predictor: bool) -> Parts:
        encoder = select(state, prefix)
        head = "head." if is_vit(encoder) else "fc."  # MoCo v3 puts the projector in place of the classifier
        return Parts(_without(encoder, head), _head_keys(encoder, head),
                     _head_keys(state, "predictor.") if predictor else None)

    branches = {"online": branch("base_encoder.", True)}
    if any(k.startswith("momentum_encoder.") for k in state):
        branches["momentum"] = branch("momentum_encoder.", False)
    arch = str(raw.get("arch") or "")
    # MoCo v3's own ViT-S has 12 heads (not timm's 6): its names map to its own architectures
    vit_arch = f"mocov3_{arch}" if arch in ("vit_small", "vit_base") else (arch or None)
    return Layout(
        "mocov3", branches, "online", Hints(activation="relu", vit_arch=vit_arch if is_vit(branches["online"].backbone) else None),
        Z_AFFINE_FREE_BN,
        ["branches: online = base_encoder (+ predictor), momentum = momentum_encoder; the projector is "
         "the MLP MoCo v3 puts in the encoder's fc (ResNet) or head (ViT); MoCo v3 evaluates the base encoder"],
        epoch=_int(raw.get("epoch")), method="mocov3",
    )


def swav(raw: Mapping, state: Mapping[str, torch.Tensor]) -> Layout | None:
    if not (is_resnet(state) and any(k.startswith(("projection_head.", "prototypes.")) for k in state)):
        return None
    encoder = _without(state, "projection_head.", "prototypes.", "fc.")
    return Layout(
        "swav", {"online": Parts(encoder, _head_keys(state, "projection_head."))}, "online",
        Hints(activation="relu"),
        "projection head output, before the L2 normalisation and the prototypes",
        ["SwAV's ResNet pads by 1 pixel before a padding-2 7x7 conv: the same as torchvision's padding 3"],
        epoch=_int(raw.get("epoch")), method="swav",
    )


def dino(raw: Mapping, path: Path) -> Layout | None:
    if not any(_tensors(raw.get(k)) for k in ("teacher", "student")):
        return None
    branches = {}
    for name in ("teacher", "student"):
        if not _tensors(raw.get(name)):
            continue
        state = strip_prefixes(raw[name])
        if not any(k.startswith("backbone.") for k in state):
            raise CheckpointError(f"{path}: the {name!r} weights have no backbone.* keys; not a DINO checkpoint.")
        branches[name] = Parts(_encoder(state, "backbone."), _head_keys(state, "head.mlp."))
    args = raw.get("args")
    arch = getattr(args, "arch", None) if args is not None else None
    hints = Hints(activation="gelu", vit_arch=str(arch) if arch and str(arch).startswith(("vit", "deit")) else None,
                  vit_pos_resample="dino")
    return Layout(
        "dino", branches, "teacher" if "teacher" in branches else "student", hints, Z_DINO,
        ["branches: student, teacher (DINO evaluates the teacher)", "head activation: GELU (DINO's head)"]
        + (["ViT inputs of another size: pos_embed resized as DINO's interpolate_pos_encoding does"]
           if is_vit(next(iter(branches.values())).backbone) else []),
        epoch=_int(raw.get("epoch")), method="dino",
        dataset=None,
    )


def barlowtwins(raw: Mapping, state: Mapping[str, torch.Tensor]) -> Layout | None:
    if not ("bn.running_mean" in state and any(k.startswith("backbone.") for k in state)
            and any(k.startswith("projector.") for k in state)):
        return None
    projector = select(state, "projector.")
    last = max(int(k.split(".")[0]) for k in projector)
    # The loss sees bn(projector(h)): the affine-free BatchNorm is Z's last layer.
    projector.update({f"{last + 1}.{k}": v for k, v in select(state, "bn.").items()})
    return Layout(
        "barlowtwins", {"online": Parts(_encoder(state, "backbone."), projector)}, "online",
        Hints(activation="relu"), "projector output after the affine-free bn the loss applies "
        "(Barlow Twins' `bn`, appended to the projector)",
        ["Barlow Twins' final `bn` (affine-free BatchNorm) is part of Z: the cross-correlation is computed on it"],
        epoch=_int(raw.get("epoch")), method="barlowtwins",
    )


def _vicreg_optimizer(raw: Mapping) -> bool:
    """VICReg's LARS keeps its ``exclude_bias_and_norm`` filter in every parameter group."""
    optimizer = raw.get("optimizer")
    groups = optimizer.get("param_groups") if isinstance(optimizer, Mapping) else None
    for group in groups or []:
        for key in ("weight_decay_filter", "lars_adaptation_filter"):
            value = group.get(key) if isinstance(group, Mapping) else None
            name = value.qualname if isinstance(value, MissingObject) else getattr(value, "__qualname__", "")
            if str(name).endswith("exclude_bias_and_norm"):
                return True
    return False


def backbone_projector(raw: Mapping, state: Mapping[str, torch.Tensor]) -> Layout | None:
    """VICReg's model.pth, and any other ``backbone.*`` (+ ``projector.*``/``predictor.*``) dict."""
    if not any(k.startswith("backbone.") for k in state):
        return None
    if any(k.startswith("backbone.0.") for k in state) and any(k.startswith("backbone.4.") for k in state):
        return None  # lightly's ResNet children
    stray = sorted({k.split(".")[0] for k in state} - {"backbone", "projector", "predictor"})
    if stray and not set(stray) <= {"classifier", "momentum_classifier", "queue", "prototypes"}:
        raise CheckpointError(
            f"The weights have backbone.* keys but also {', '.join(s + '.*' for s in stray)}, which no "
            f"known layout puts beside them. Known formats: {KNOWN_FORMATS}."
        )
    parts = Parts(_encoder(state, "backbone."), _head_keys(state, "projector."), _head_keys(state, "predictor."))
    if _vicreg_optimizer(raw):
        return Layout("vicreg", {"online": parts}, "online", Hints(activation="relu"), Z_PROJECTOR,
                      ["recognised as VICReg's model.pth by its optimizer's exclude_bias_and_norm filter"],
                      epoch=_int(raw.get("epoch")), method="vicreg")
    return Layout("state-dict", {"online": parts}, "online", Hints(), Z_PROJECTOR,
                  ["a plain backbone + projector state dict (VICReg's layout)"],
                  epoch=_int(raw.get("epoch")))


_LIGHTLY_CHILDREN = {0: "conv1", 1: "bn1", 4: "layer1", 5: "layer2", 6: "layer3", 7: "layer4"}


def _lightly_backbone(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state.items():
        index, _, rest = key.partition(".")
        if not index.isdigit() or int(index) not in _LIGHTLY_CHILDREN:
            raise CheckpointError(
                f"Key backbone.{key} does not fit torchvision's ResNet children (conv1, bn1, relu, maxpool, "
                "layer1..layer4 as backbone.0..backbone.7)."
            )
        renamed[f"{_LIGHTLY_CHILDREN[int(index)]}.{rest}"] = value
    return renamed


def lightly(raw: Mapping, state: Mapping[str, torch.Tensor]) -> Layout | None:
    if "0.weight" in state and any(k.startswith("4.0.") for k in state):
        # the backbone alone, as lightly's tutorials save it: nn.Sequential(*resnet.children()[:-1])
        state = {f"backbone.{k}": v for k, v in state.items()}
    if not ("backbone.0.weight" in state and any(k.startswith("backbone.4.") for k in state)):
        return None
    dino_head = any(k.startswith("projection_head.last_layer") for k in state)
    branches = {"online": Parts(_lightly_backbone(select(state, "backbone.")),
                                _head_keys(state, "projection_head.layers."),
                                _head_keys(state, "prediction_head.layers."))}
    if any(k.startswith("backbone_momentum.") for k in state):
        branches["momentum"] = Parts(_lightly_backbone(select(state, "backbone_momentum.")),
                                     _head_keys(state, "projection_head_momentum.layers."))
    known = ("backbone.", "backbone_momentum.", "projection_head.", "prediction_head.", "projection_head_momentum.",
             "prototypes.", "queues.")  # SwAV's prototypes and queues (examples/pytorch/swav*.py): after Z
    stray = sorted({k.split(".")[0] for k in state if not k.startswith(known)})
    if stray:
        raise CheckpointError(
            f"A lightly-style model with modules clusterprobe does not know: {', '.join(stray)}. It reads "
            "backbone (torchvision ResNet children), projection_head, prediction_head and their _momentum copies."
        )
    return Layout(
        "lightly", branches, "online", Hints(activation="gelu" if dino_head else "relu"),
        Z_DINO if dino_head else "projection head output",
        ["backbone = torchvision ResNet children (backbone.0 conv1 ... backbone.7 layer4)",
         f"heads: lightly's projection heads ({'GELU, DINO head' if dino_head else 'ReLU'}); lightly's "
         "benchmarks evaluate the online backbone"],
        epoch=_int(raw.get("epoch")),
    )


def encoder_only(raw: Mapping, state: Mapping[str, torch.Tensor]) -> Layout | None:
    """torchvision/timm ResNets and ViTs (DINO's, timm's): H only, the classifier dropped."""
    if is_resnet(state):
        return Layout("state-dict", {"online": Parts(_without(state, "fc."))}, "online",
                      z="none (encoder only)", facts=["an encoder-only state dict (torchvision/timm names)"],
                      epoch=_int(raw.get("epoch")))
    if is_vit(state):
        return Layout("state-dict", {"online": Parts(_without(state, "head.", "head_dist."))}, "online",
                      z="none (encoder only)", facts=["an encoder-only ViT state dict (timm/DINO names)"],
                      epoch=_int(raw.get("epoch")))
    return None


#: Tried in order on the file's state dict (after DINO's and solo-learn's, which need the whole file).
RECOGNISERS: tuple[Callable[[Mapping, Mapping[str, torch.Tensor]], Layout | None], ...] = (
    resa, mocov3, barlowtwins, swav, lightly, backbone_projector, encoder_only,
)


def recognise(raw: Mapping, path: Path, args_json: Path | None) -> Layout:
    """The :class:`Layout` of a (non-clusterprobe) checkpoint dict, or a clear refusal."""
    layout = dino(raw, path)
    if layout is None and _is_solo_learn(raw, path, args_json):
        return solo_learn(raw, path, args_json)
    if args_json is not None:  # it would be silently ignored: the user believes it was applied
        raise CheckpointError(
            f"args_json (--args-json) describes a solo-learn checkpoint, but {path} is not one (no "
            "Lightning 'state_dict' with 'backbone.' keys). Leave it out: this file's architecture is "
            f"read from the file itself. Known formats: {KNOWN_FORMATS}."
        )
    if layout is not None:
        return layout
    state = _weights(raw)
    if state is None:
        raise CheckpointError(
            f"{path} is of an unknown format: no dict of tensors under its keys "
            f"({', '.join(map(str, list(raw)[:8]))}). Known formats: {KNOWN_FORMATS}."
        )
    for recogniser in RECOGNISERS:
        layout = recogniser(raw, state)
        if layout is not None:
            return layout
    sample = ", ".join(list(state)[:5])
    raise CheckpointError(f"{path} is of an unknown format (its first keys: {sample}). Known formats: {KNOWN_FORMATS}.")
