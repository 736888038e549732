"""From recognised weights to an :class:`SSLModel`: infer the architecture, then load strictly.

A format recogniser (see :mod:`.formats`) hands over each branch as :class:`Parts` (encoder,
projector and predictor weights with their keys in torchvision/timm naming) and :class:`Hints`
(what the format or the user determined: stem padding, head activation, ViT heads). What the
tensors determine is read from them; what neither determines is filled in with a documented
default and recorded as an assumption (a sentence naming the option that settles it).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import ArchitectureMismatchError, AssumptionWarning, CheckpointError
from ..models import ModelConfig, SSLModel, describe_from_state_dict
from ..models.backbones import RESNET_LAYOUTS
from ..models.heads import ACTIVATIONS
from .files import KNOWN_FORMATS
from .loaded import listing

Tensors = Mapping[str, torch.Tensor]


@dataclass
class Parts:
    """One branch's weights by part, keys without the part's prefix.

    ``backbone`` uses torchvision's ResNet names (``conv1.weight``, ``layer1.0.conv1.weight``)
    or timm's ViT names (``cls_token``, ``blocks.0.attn.qkv.weight``); ``projector`` and
    ``predictor`` are flat sequential heads (``0.weight``, ``1.running_mean``, ...).
    """

    backbone: dict[str, torch.Tensor]
    projector: dict[str, torch.Tensor] | None = None
    predictor: dict[str, torch.Tensor] | None = None


@dataclass
class Hints:
    """Architecture facts a format (or the user) settles; None leaves them to the weights."""

    backbone: str | None = None  # ResNet name from a config file (solo-learn's args.json)
    cifar_stem: bool | None = None
    stem_padding: int | None = None
    activation: str | None = None
    vit_arch: str | None = None
    vit_heads: int | None = None
    vit_pos_resample: str | None = None  # ViTBackbone's pos_resample ("dino" for DINO's own ViT)
    stem_note: str | None = None  # why the stem is what it is, for the facts

    def merged(self, **given: Any) -> "Hints":
        """These hints with every non-None value of ``given`` taking precedence (user options)."""
        return replace(self, **{k: v for k, v in given.items() if v is not None})


@dataclass
class Assembly:
    model: SSLModel
    facts: list[str] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)


def select(state: Tensors, prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def strip_prefixes(state_dict: Tensors) -> dict[str, torch.Tensor]:
    """Remove DDP's leading ``module.`` and torch.compile's ``_orig_mod.`` from every key."""
    cleaned = {}
    for key, value in state_dict.items():
        while key.startswith("module."):
            key = key[len("module."):]
        key = key.replace("_orig_mod.", "")
        cleaned[key] = value
    return cleaned


def is_resnet(state: Tensors) -> bool:
    return "conv1.weight" in state and "layer1.0.conv1.weight" in state


def is_vit(state: Tensors) -> bool:
    return "patch_embed.proj.weight" in state and any(k.startswith("blocks.0.") for k in state)


# ---------------------------------------------------------------------------------------------
def infer_backbone_config(backbone_state: Tensors) -> dict[str, Any]:
    """Infer a ResNet's name, width, stem and input channels from its (un-prefixed) state dict."""
    if not is_resnet(backbone_state):
        raise CheckpointError(
            "The weights do not look like a ResNet (no conv1.weight / layer1.0.conv1.weight). "
            f"Known formats: {KNOWN_FORMATS}."
        )
    blocks = []
    for stage in range(1, 5):
        indices = {int(m.group(1)) for key in backbone_state if (m := re.match(rf"layer{stage}\.(\d+)\.", key))}
        blocks.append(len(indices))
    bottleneck = "layer1.0.conv3.weight" in backbone_state
    name = next(
        (n for n, (block, layout) in RESNET_LAYOUTS.items()
         if tuple(blocks) == layout and (block.expansion == 4) == bottleneck),
        None,
    )
    if name is None:
        raise CheckpointError(
            f"Unsupported ResNet layout: {blocks} blocks per stage ({'bottleneck' if bottleneck else 'basic'} "
            f"blocks). Supported: {', '.join(RESNET_LAYOUTS)}."
        )
    conv1 = backbone_state["conv1.weight"]
    kernel = int(conv1.shape[-1])
    if kernel not in (3, 7):
        raise CheckpointError(
            f"Unsupported ResNet stem: conv1 is {kernel}x{kernel}; clusterprobe rebuilds the "
            "torchvision 7x7 stem and the 3x3 CIFAR stem."
        )
    return {"backbone": name, "width": int(conv1.shape[0]), "in_channels": int(conv1.shape[1]),
            "cifar_stem": kernel == 3}


def _backbone_config(backbone: Tensors, hints: Hints, facts: list[str], assumptions: list[str]) -> dict[str, Any]:
    if is_vit(backbone):
        from ..models.vit import infer_vit_options

        options, notes = infer_vit_options(backbone, arch=hints.vit_arch, num_heads=hints.vit_heads)
        assumptions.extend(notes)
        if hints.vit_pos_resample:
            options = {**options, "pos_resample": hints.vit_pos_resample}
        facts.append(f"encoder: ViT, {options['depth']} blocks of {options['embed_dim']}-d, "
                     f"{options['num_heads']} heads, patch {options['patch_size']}, "
                     f"H = {'class token' if options.get('pool', 'token') == 'token' else 'token mean'} after the final norm")
        return {"backbone": "vit", "vit": options, "in_channels": int(options.get("in_chans", 3)),
                "cifar_stem": False}
    config = infer_backbone_config(backbone)
    if hints.backbone and hints.backbone != config["backbone"]:
        config["backbone"] = hints.backbone  # the file's own config wins; the strict load checks it
    if hints.cifar_stem is not None and config["cifar_stem"] != hints.cifar_stem:
        kind = "3x3 CIFAR" if config["cifar_stem"] else "7x7 ImageNet"
        facts.append(f"note: the weights have a {kind} stem although the file's config suggests otherwise; "
                     "the weights decide")
    if config["cifar_stem"]:
        if hints.stem_padding is not None:
            config["stem_padding"] = int(hints.stem_padding)
            facts.append(f"stem: 3x3 CIFAR stem, stride 1, zero padding {hints.stem_padding}, no max-pool"
                         + (f" ({hints.stem_note})" if hints.stem_note else ""))
        else:
            config["stem_padding"] = 2
            assumptions.append(
                "the 3x3 CIFAR stem's padding is not recorded in this file: assumed zero padding 2 "
                "and no max-pool (as in the ReSA reference code and solo-learn); pass "
                "stem_padding=1 (--stem-padding 1) if the network was built with padding 1"
            )
    else:
        facts.append("stem: torchvision 7x7 stride-2 conv (padding 3) and 3x3 max-pool")
    facts.insert(0, f"encoder: {config['backbone']} of width {config['width']}, H = global average pool of layer4")
    return config


def _head(state: Tensors | None, prefix: str, hints: Hints, facts: list[str], assumptions: list[str]) -> list[dict] | None:
    if not state:
        return None
    activation = hints.activation
    keyed = {f"{prefix}{k}": v for k, v in state.items()}
    description = describe_from_state_dict(keyed, prefix, activation=activation or "relu")
    has_activation = any(layer["type"] in ACTIVATIONS for layer in description)
    if has_activation and activation is None:
        assumptions.append(
            f"the {prefix.rstrip('.')}'s activation is not recorded in this file: assumed ReLU; pass "
            "head_activation='gelu' (--head-activation gelu) if it used GELU (as DINO/iBOT heads do)"
        )
    elif has_activation:
        facts.append(f"{prefix.rstrip('.')} activation: {activation.upper() if activation == 'gelu' else 'ReLU'}")
    return description


def assemble(parts: Parts, hints: Hints, path: Path, what: str) -> Assembly:
    """Build the model the weights describe and load them strictly (every key, every shape)."""
    facts: list[str] = []
    assumptions: list[str] = []
    config = _backbone_config(parts.backbone, hints, facts, assumptions)
    projector = _head(parts.projector, "projector.", hints, facts, assumptions)
    predictor = _head(parts.predictor, "predictor.", hints, facts, assumptions)
    model = SSLModel(ModelConfig(**config, projector=projector, predictor=predictor))
    state = {f"backbone.{k}": v for k, v in parts.backbone.items()}
    for name, head in (("projector", parts.projector), ("predictor", parts.predictor)):
        state.update({f"{name}.{k}": v for k, v in (head or {}).items()})
    load_strict(model, state, what, path)
    for assumption in assumptions:
        warnings.warn(f"{path}: {assumption.rstrip('.')}.", AssumptionWarning, stacklevel=4)
    return Assembly(model, facts, assumptions)


def load_strict(module: torch.nn.Module, state: Tensors, what: str, path: Path) -> None:
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
