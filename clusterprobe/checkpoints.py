"""Reading and writing checkpoints, safely.

Formats read by :func:`load_checkpoint`:

- **clusterprobe** checkpoints (written by :func:`save_checkpoint` / ``clusterprobe train``):
  model config + online and momentum weights + epoch; rebuildable with no code outside the file.
- **solo-learn** PyTorch Lightning ``.ckpt`` files: ``state_dict`` with ``backbone.*``,
  ``projector.<i>.*`` and optionally ``momentum_backbone.*`` / ``momentum_projector.*`` /
  ``predictor.*`` / ``classifier.*``, plus the ``args.json`` solo-learn writes beside them (method,
  backbone, data set). solo-learn's CIFAR stem uses padding 2.
- **plain state dicts** of torchvision ResNets (H only) or of a whole encoder + projector
  (``backbone.*``, ``projector.*``), optionally wrapped as ``{"state_dict": ...}`` or
  ``{"model": ...}``.

Files are read with ``torch.load(weights_only=True)``, which cannot run code. A file that needs
full unpickling (Lightning checkpoints often store arbitrary Python objects in their
hyper-parameters) is refused with an explanation unless ``trust=True``. ``module.`` (DDP) and
``_orig_mod.`` (torch.compile) key prefixes are stripped.
"""

from __future__ import annotations

import io as _io
import json
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from .errors import ArchitectureMismatchError, CheckpointError, UnsafeCheckpointError
from .io import atomic_write, sha256_file
from .models import ModelConfig, SSLModel, describe_from_state_dict
from .models.backbones import RESNET_LAYOUTS
from .models.heads import head_dims

CHECKPOINT_FORMAT = "clusterprobe.checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
KNOWN_FORMATS = (
    "clusterprobe checkpoints (from `clusterprobe train` or save_checkpoint), "
    "solo-learn Lightning .ckpt files (with their args.json beside them), and plain state "
    "dicts of torchvision ResNets or of a backbone + projector model (optionally under "
    "'state_dict' or 'model')"
)
#: solo-learn keys that are not part of the analysed model (heads of the method, classifier).
_SOLO_IGNORED_PREFIXES = ("classifier.", "prototypes.", "momentum_classifier.", "queue", "head.")


@dataclass
class LoadedCheckpoint:
    """A model rebuilt from a checkpoint (in eval mode), with its provenance.

    Attributes:
        model: the :class:`~clusterprobe.models.SSLModel` holding the chosen branch's weights.
        format: ``clusterprobe``, ``solo-learn`` or ``state-dict``.
        branch: ``online`` or ``momentum``.
        epoch, step, method, dataset: what the file says, or None where it says nothing.
    """

    model: SSLModel
    path: Path
    format: str
    branch: str
    epoch: int | None = None
    step: int | None = None
    method: str | None = None
    dataset: str | None = None
    sha256: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def layer_names(self) -> list[str]:
        return self.model.layer_names()

    def provenance(self) -> dict[str, Any]:
        """Plain description for a feature bank's meta.json."""
        return {
            "path": str(self.path.resolve()),
            "sha256": self.sha256,
            "format": self.format,
            "branch": self.branch,
            "epoch": self.epoch,
            "step": self.step,
            "method": self.method,
            "dataset": self.dataset,
            "model_config": self.model.config.to_dict(),
            **({"run": self.extra["run"]} if "run" in self.extra else {}),
        }


# ---------------------------------------------------------------------------------------------
# writing
def save_checkpoint(
    path: str | Path,
    model: SSLModel,
    epoch: int,
    step: int = 0,
    method: str | None = None,
    momentum_model: SSLModel | None = None,
    eval_branch: str | None = None,
    dataset: str | None = None,
    run: str | None = None,
    train_state: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a clusterprobe checkpoint atomically (a crash or full disk keeps the old file).

    Everything stored is a tensor or a plain Python value, so :func:`load_checkpoint` reads it
    with ``weights_only=True``. ``eval_branch`` (``online``/``momentum``) is the branch analysed
    by default; it defaults to ``momentum`` when a momentum model is given. ``train_state`` holds
    what resuming needs (optimiser, scheduler, RNG states) and must be plain too.
    """
    if eval_branch is None:
        eval_branch = "momentum" if momentum_model is not None else "online"
    if eval_branch not in ("online", "momentum"):
        raise CheckpointError(f"eval_branch must be 'online' or 'momentum', got {eval_branch!r}.")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model_config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "momentum_state_dict": (
            None
            if momentum_model is None
            else {k: v.detach().cpu() for k, v in momentum_model.state_dict().items()}
        ),
        "momentum_model_config": None if momentum_model is None else momentum_model.config.to_dict(),
        "eval_branch": eval_branch,
        "epoch": int(epoch),
        "step": int(step),
        "method": method,
        "dataset": dataset,
        "run": run,
        "train_state": dict(train_state) if train_state is not None else None,
        "extra": dict(extra or {}),
    }
    buffer = _io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write(path, lambda handle: handle.write(buffer.getbuffer()))


# ---------------------------------------------------------------------------------------------
# reading raw files
def read_checkpoint_file(path: str | Path, trust: bool = False) -> Any:
    """``torch.load`` a file on the CPU, turning every failure into a clear :class:`CheckpointError`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"No checkpoint at {path}: the file does not exist.")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; pass the checkpoint file inside it.")
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head:
        raise CheckpointError(f"{path} is empty (0 bytes): the file was not written completely.")
    is_zip = head.startswith(b"PK")
    if not is_zip and head[:1] != b"\x80":
        raise CheckpointError(
            f"{path} is not a checkpoint: it is neither a PyTorch zip archive nor a pickle file. "
            f"Known formats: {KNOWN_FORMATS}."
        )
    if is_zip and not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is truncated or corrupt: its zip archive has no central directory (the "
            "write was probably interrupted). Use an earlier checkpoint or re-save it."
        )
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of raw pickles before refusing them; our
            # UnsafeCheckpointError below says what matters.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as error:
        if trust or "weights_only" not in str(error).lower() and "weights only" not in str(error).lower():
            raise CheckpointError(f"{path} could not be unpickled: {error}") from error
        found = re.findall(r"GLOBAL ([\w.]+)", str(error))
        what = f" (it holds {found[0]})" if found else ""
        raise UnsafeCheckpointError(
            f"{path} cannot be loaded safely: it stores Python objects beyond tensors and plain "
            f"values{what}, and unpickling them can run arbitrary code. Load it only if you trust "
            "its source, with trust=True (load_checkpoint; on the command line `clusterprobe "
            "extract` and `clusterprobe layers` take --trust)."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as error:
        raise CheckpointError(
            f"{path} is truncated or corrupt and could not be read ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no detail'}). Use an earlier "
            "checkpoint or re-save it."
        ) from error


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove DDP's leading ``module.`` and torch.compile's ``_orig_mod.`` from every key."""
    cleaned = {}
    for key, value in state_dict.items():
        while key.startswith("module."):
            key = key[len("module."):]
        key = key.replace("_orig_mod.", "")
        cleaned[key] = value
    return cleaned


def _select(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


# ---------------------------------------------------------------------------------------------
# architecture inference
def infer_backbone_config(backbone_state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Infer a ResNet's name, width, stem and input channels from its (un-prefixed) state dict."""
    if "conv1.weight" not in backbone_state or "layer1.0.conv1.weight" not in backbone_state:
        raise CheckpointError(
            "The weights do not look like a ResNet (no conv1.weight / layer1.0.conv1.weight). "
            f"Known formats: {KNOWN_FORMATS}."
        )
    blocks = []
    for stage in range(1, 5):
        indices = {
            int(m.group(1))
            for key in backbone_state
            if (m := re.match(rf"layer{stage}\.(\d+)\.", key))
        }
        blocks.append(len(indices))
    bottleneck = "layer1.0.conv3.weight" in backbone_state
    name = next(
        (
            n
            for n, (block, layout) in RESNET_LAYOUTS.items()
            if tuple(blocks) == layout and (block.expansion == 4) == bottleneck
        ),
        None,
    )
    if name is None:
        raise CheckpointError(
            f"Unsupported ResNet layout: {blocks} blocks per stage ({'bottleneck' if bottleneck else 'basic'} "
            f"blocks). Supported: {', '.join(RESNET_LAYOUTS)}."
        )
    conv1 = backbone_state["conv1.weight"]
    return {
        "backbone": name,
        "width": int(conv1.shape[0]),
        "in_channels": int(conv1.shape[1]),
        "cifar_stem": int(conv1.shape[-1]) == 3,
    }


def _load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str, path: Path) -> None:
    """Load ``state`` into ``module``, reporting every missing/unexpected/mis-shaped key."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or shapes:

        def listing(keys):
            shown = ", ".join(keys[:8])
            return shown + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {listing(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {listing(shapes)}")
        raise ArchitectureMismatchError(
            f"The weights in {path} do not match the {what} built for them; "
            + "; ".join(parts)
            + ". Check that the checkpoint and its config (e.g. args.json) belong together."
        )
    module.load_state_dict(state, strict=True)


def _model_from_state(
    state: Mapping[str, torch.Tensor],
    path: Path,
    stem_padding: int,
    config_overrides: Mapping[str, Any] | None = None,
    activation: str = "relu",
) -> SSLModel:
    """Build an :class:`SSLModel` whose architecture follows the weights, then load them."""
    backbone_state = _select(state, "backbone.")
    config = dict(infer_backbone_config(backbone_state), stem_padding=stem_padding)
    config.update(config_overrides or {})
    projector = describe_from_state_dict(state, "projector.", activation=activation)
    predictor = describe_from_state_dict(state, "predictor.", activation=activation)
    model = SSLModel(ModelConfig(**config, projector=projector, predictor=predictor))
    _load_strict(model, state, f"{config['backbone']} model", path)
    return model


# ---------------------------------------------------------------------------------------------
# loading
def load_checkpoint(
    path: str | Path,
    momentum: bool | None = None,
    trust: bool = False,
    args_json: str | Path | None = None,
    stem_padding: int | None = None,
    hash_file: bool = True,
) -> LoadedCheckpoint:
    """Load a checkpoint of any known format into an :class:`SSLModel` in eval mode.

    Args:
        path: checkpoint file.
        momentum: take the momentum (EMA) branch (True), the online one (False), or the
            checkpoint's own default (None: clusterprobe checkpoints record it, e.g. the momentum
            encoder for ReSA and BYOL; solo-learn: online).
        trust: allow full unpickling (can run code from the file); only for trusted files.
        args_json: solo-learn's args.json, if not beside the checkpoint.
        stem_padding: padding of a CIFAR stem where the file does not record it (default: 2 for
            solo-learn, 1 otherwise).
        hash_file: record the file's SHA-256 (for provenance).

    Raises:
        CheckpointError: missing, truncated, unknown or mismatching file (the message says which
            keys), UnsafeCheckpointError when the file needs ``trust=True``.
    """
    path = Path(path)
    raw = read_checkpoint_file(path, trust=trust)
    if not isinstance(raw, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(raw).__name__}, not a dict of weights. Known formats: {KNOWN_FORMATS}."
        )
    if raw.get("format") == CHECKPOINT_FORMAT:
        loaded = _load_own(raw, path, momentum)
    elif "state_dict" in raw and (
        "pytorch-lightning_version" in raw
        or any(str(k).startswith(("backbone.", "module.backbone.")) for k in raw["state_dict"])
        and ((path.parent / "args.json").exists() or args_json is not None)
    ):
        loaded = _load_solo_learn(raw, path, momentum, args_json, stem_padding)
    else:
        loaded = _load_plain(raw, path, momentum, stem_padding)
    loaded.model.eval()
    if hash_file:
        loaded.sha256 = sha256_file(path)
    return loaded


def _load_own(raw: Mapping, path: Path, momentum: bool | None) -> LoadedCheckpoint:
    if raw.get("format_version", 0) > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer clusterprobe (checkpoint format "
            f"{raw['format_version']}); upgrade clusterprobe to read it."
        )
    branch = raw.get("eval_branch", "online") if momentum is None else ("momentum" if momentum else "online")
    state = raw["momentum_state_dict"] if branch == "momentum" else raw["state_dict"]
    if state is None:
        raise CheckpointError(
            f"{path} has no momentum branch (its method trains none); load it without "
            "momentum=True (--momentum)."
        )
    config = raw["model_config"]
    if branch == "momentum" and raw.get("momentum_model_config") is not None:
        config = raw["momentum_model_config"]  # e.g. without the online-only predictor
    model = SSLModel(ModelConfig.from_dict(config))
    _load_strict(model, strip_prefixes(state), "model described by the checkpoint's config", path)
    return LoadedCheckpoint(
        model=model, path=path, format="clusterprobe", branch=branch, epoch=raw.get("epoch"),
        step=raw.get("step"), method=raw.get("method"), dataset=raw.get("dataset"),
        extra={"run": raw.get("run")} if raw.get("run") else {},
    )


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
    }


def _load_solo_learn(
    raw: Mapping, path: Path, momentum: bool | None, args_json, stem_padding: int | None
) -> LoadedCheckpoint:
    args = read_solo_learn_args(Path(args_json) if args_json else path.parent / "args.json")
    state = strip_prefixes(raw["state_dict"])
    branch = "momentum" if momentum else "online"
    if momentum:
        if not any(k.startswith("momentum_backbone.") for k in state):
            raise CheckpointError(
                f"{path} has no momentum branch (no momentum_backbone.* keys; method "
                f"{args['method']!r}); load it without --momentum."
            )
        keys = {"backbone.": "momentum_backbone.", "projector.": "momentum_projector."}
    else:
        keys = {"backbone.": "backbone.", "projector.": "projector.", "predictor.": "predictor."}
    model_state = {}
    for target, source in keys.items():
        model_state.update({target + k: v for k, v in _select(state, source).items()})
    overrides: dict[str, Any] = {}
    if args.get("backbone"):
        if args["backbone"] not in RESNET_LAYOUTS:
            raise CheckpointError(
                f"args.json names backbone {args['backbone']!r}; clusterprobe rebuilds "
                f"{', '.join(RESNET_LAYOUTS)}."
            )
        overrides["backbone"] = args["backbone"]
    if args.get("dataset"):
        overrides["cifar_stem"] = str(args["dataset"]).lower() in ("cifar10", "cifar100")
    model = _model_from_state(model_state, path, stem_padding if stem_padding is not None else 2, overrides)
    hidden, out = args.get("proj_hidden_dim"), args.get("proj_output_dim")
    if model.projector is not None and out is not None and head_dims(model.config.projector)[1] != int(out):
        raise ArchitectureMismatchError(
            f"args.json says the projector outputs {out}-d but the weights in {path} give "
            f"{head_dims(model.config.projector)[1]}-d; the checkpoint and args.json do not belong together."
        )
    epoch = raw.get("epoch")
    match = re.search(r"ep=(\d+)", path.name)
    if match:
        epoch = int(match.group(1))
    return LoadedCheckpoint(
        model=model, path=path, format="solo-learn", branch=branch, epoch=epoch,
        step=raw.get("global_step"), method=args.get("method"), dataset=args.get("dataset"),
        extra={"run": args["name"]} if args.get("name") else {},
    )


def _load_plain(raw: Mapping, path: Path, momentum: bool | None, stem_padding: int | None) -> LoadedCheckpoint:
    state = raw
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is of an unknown format. Known formats: {KNOWN_FORMATS}.")
    state = strip_prefixes(state)
    if momentum:
        raise CheckpointError(f"{path} is a plain state dict with one set of weights: it has no momentum branch.")
    if any(k.startswith("backbone.") for k in state):
        model_state = {k: v for k, v in state.items() if k.startswith(("backbone.", "projector.", "predictor."))}
    elif "conv1.weight" in state and "layer1.0.conv1.weight" in state:
        # A torchvision ResNet: drop the classifier, keep the encoder.
        model_state = {f"backbone.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    else:
        sample = ", ".join(list(state)[:5])
        raise CheckpointError(
            f"{path} is of an unknown format (its first keys: {sample}). Known formats: {KNOWN_FORMATS}."
        )
    model = _model_from_state(model_state, path, stem_padding if stem_padding is not None else 1)
    return LoadedCheckpoint(model=model, path=path, format="state-dict", branch="online",
                            epoch=raw.get("epoch") if isinstance(raw.get("epoch"), int) else None)
