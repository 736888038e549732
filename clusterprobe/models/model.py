"""The joint-embedding model: encoder -> H, projector -> P0, P1, ..., Z, optional predictor.

Layer names (see :class:`LayerSpec`):

- ``H``: the encoder output after global average pooling (the backbone's output).
- ``P0``, ``P1``, ...: the projector's hidden blocks, tapped after the activation by default
  (``pre_activation=True`` taps the BatchNorm output just before it).
- ``Z``: the projector output, the embedding the loss sees, *before* any L2 normalisation the
  loss applies (for ReSA: after the final affine-free BatchNorm).
- any dotted module path, e.g. ``backbone.layer3``; 4-D outputs are average-pooled to vectors.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..errors import ClusterprobeError, LayerError, closest_name
from .backbones import ResNetBackbone, backbone_out_dim
from .heads import build_sequential, head_dims, hidden_taps, mlp_description

_HIDDEN = re.compile(r"^P(\d+)$")


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model's architecture; plain data only (checkpoint-safe).

    ``backbone`` is a ResNet name (``resnet18``/``34``/``50``, shaped by ``width``,
    ``cifar_stem``, ``stem_padding`` and ``in_channels``) or ``vit``, a Vision Transformer
    described by the ``vit`` options (see :class:`clusterprobe.models.vit.ViTBackbone`).
    ``stem_padding`` is the CIFAR stem's effective zero padding: 2 in the ReSA reference code and
    solo-learn (the default); checkpoints of earlier versions record 1 and rebuild with it.
    ``projector`` and ``predictor`` are layer descriptions (see
    :func:`clusterprobe.models.heads.mlp_description`); None means no such head.
    """

    backbone: str = "resnet18"
    width: int = 64
    cifar_stem: bool = True
    stem_padding: int = 2
    in_channels: int = 3
    projector: list[dict] | None = None
    predictor: list[dict] | None = None
    vit: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ClusterprobeError(
                f"Model config has unknown fields {sorted(unknown)}; known fields: {sorted(known)}."
            )
        return cls(**dict(data))


@dataclass(frozen=True)
class LayerSpec:
    """Where a named layer is tapped: the output of ``module`` (a path inside :class:`SSLModel`).

    ``pool`` average-pools 4-D (B, C, H, W) outputs over space; ``tokens`` reduces 3-D
    (B, tokens, D) transformer outputs to the class token (``cls``) or the mean of the tokens
    after the first ``skip_tokens`` (``mean``: the patch tokens, past the class and register
    tokens); ``pre_activation`` records that a hidden projector layer was tapped before its
    activation.
    """

    name: str
    module: str
    pool: bool = True
    pre_activation: bool = False
    tokens: str | None = None
    skip_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data["tokens"] is None:  # banks written before ViT support record no such field
            del data["tokens"]
        if not data["skip_tokens"]:  # nor banks written before register tokens were skipped
            del data["skip_tokens"]
        return data


class SSLModel(nn.Module):
    """Encoder (``backbone``) + optional ``projector`` + optional ``predictor``.

    ``forward(x)`` returns Z (or H when there is no projector): shape (batch, dim). Use
    :meth:`encode`, :meth:`project` and :meth:`predict` for the individual stages.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.backbone = build_backbone(config)
        self.projector = build_sequential(config.projector) if config.projector else None
        self.predictor = build_sequential(config.predictor) if config.predictor else None
        if self.projector is not None:
            d_in, _ = head_dims(config.projector)
            if d_in != self.backbone.out_dim:
                raise ClusterprobeError(
                    f"The projector expects {d_in}-d input but the {config.backbone} backbone of "
                    f"width {config.width} gives {self.backbone.out_dim}-d H."
                )

    # -- stages ------------------------------------------------------------------------------
    @property
    def feature_dim(self) -> int:
        """Dimension of H."""
        return self.backbone.out_dim

    @property
    def embedding_dim(self) -> int:
        """Dimension of Z (of H when there is no projector)."""
        return head_dims(self.config.projector)[1] if self.projector is not None else self.feature_dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> H (B, feature_dim)."""
        return self.backbone(x)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """H (B, feature_dim) -> Z (B, embedding_dim)."""
        if self.projector is None:
            raise LayerError("This model has no projector, so it has no Z.")
        return self.projector(h)

    def predict(self, z: torch.Tensor) -> torch.Tensor:
        if self.predictor is None:
            raise LayerError("This model has no predictor.")
        return self.predictor(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encode(x)
        return self.project(h) if self.projector is not None else h

    # -- layers ------------------------------------------------------------------------------
    def hidden_layer_count(self) -> int:
        return len(hidden_taps(self.config.projector)) if self.projector is not None else 0

    def layer_names(self) -> list[str]:
        """The named layers this model offers: H, P0 ... P(n-1), Z (without a projector, H only)."""
        names = ["H"]
        if self.projector is not None:
            names += [f"P{i}" for i in range(self.hidden_layer_count())] + ["Z"]
        return names

    def layer_dims(self) -> dict[str, int]:
        """Dimension of each named layer (H, P0, ..., Z), read from the architecture."""
        dims = {"H": self.feature_dim}
        if self.projector is not None:
            for i, tap in enumerate(hidden_taps(self.config.projector)):
                before = self.config.projector[tap - 1]
                dims[f"P{i}"] = int(before["dim"] if before["type"] == "batchnorm" else before["out"])
            dims["Z"] = self.embedding_dim
        return dims

    def resolve_layer(self, name: str, pre_activation: bool = False) -> LayerSpec:
        """Turn a layer name (H, P<i>, Z or a module path) into a :class:`LayerSpec`."""
        name = name.strip()
        if name == "H":
            return LayerSpec("H", "backbone")
        if name == "Z" or _HIDDEN.match(name):
            if self.projector is None:
                raise LayerError(
                    f"Layer {name} needs a projector, but this model is an encoder only (for "
                    "example a plain torchvision state dict): only H and backbone module paths "
                    "such as backbone.layer4 can be extracted."
                )
            if name == "Z":
                return LayerSpec("Z", "projector")
            index = int(_HIDDEN.match(name).group(1))
            taps = hidden_taps(self.config.projector, pre_activation=pre_activation)
            if index >= len(taps):
                raise LayerError(
                    f"Layer {name} does not exist: the projector has {len(taps)} hidden "
                    f"layer(s), so this model offers {', '.join(self.layer_names())}."
                    f"{closest_name(name, self.layer_names())}"
                )
            return LayerSpec(name, f"projector.{taps[index]}", pre_activation=pre_activation)
        modules = dict(self.named_modules())
        if name in modules and name:
            _refuse_reused_module(name, modules)
            tokens, skip = None, 0
            if self.config.backbone == "vit" and name.startswith("backbone."):
                # a block's tokens are reduced as H is pooled: the class token (pool "token"), or
                # the mean of the patch tokens, past the class and register tokens (pool "avg",
                # or no class token), so a depth curve of blocks ends at what H measures
                vit = self.config.vit
                class_token = bool(vit.get("class_token", True))
                if class_token and vit.get("pool", "token") == "token":
                    tokens = "cls"
                else:
                    tokens, skip = "mean", int(class_token) + int(vit.get("reg_tokens", 0) or 0)
            return LayerSpec(name, name, tokens=tokens, skip_tokens=skip)
        suggestions = self.layer_names() + [m for m in modules if m and m.count(".") <= 2]
        raise LayerError(
            f"Unknown layer {name!r}. This model offers {', '.join(self.layer_names())}, or any "
            f"module path such as {self.stage_paths()[-2:][0]}.{closest_name(name, suggestions)}"
        )

    def stage_paths(self) -> list[str]:
        """Module paths of the encoder's stages (ResNet ``backbone.layer1``..., ViT ``backbone.blocks.0``...)."""
        if self.config.backbone == "vit":
            return [f"backbone.blocks.{i}" for i in range(len(self.backbone.blocks))]
        return [f"backbone.{n}" for n, _ in self.backbone.named_children() if n.startswith("layer")]


def _refuse_reused_module(name: str, modules: Mapping[str, nn.Module]) -> None:
    """Refuse a module path whose module runs more than once per forward pass.

    torchvision's residual blocks own a single ``relu`` module and call it after every BatchNorm
    and after the addition (BasicBlock twice, Bottleneck three times). A forward hook fires on
    every call and keeps the last, so ``backbone.layer1.0.relu`` would silently be the block's
    output (``backbone.layer1.0``), not the ReLU after ``bn1`` that the name suggests.
    """
    from torchvision.models.resnet import BasicBlock, Bottleneck

    parent_path, _, child = name.rpartition(".")
    parent = modules.get(parent_path)
    if child == "relu" and isinstance(parent, (BasicBlock, Bottleneck)):
        calls = "twice" if isinstance(parent, BasicBlock) else "three times"
        after = "bn1 and after the residual addition" if isinstance(parent, BasicBlock) else \
            "bn1, after bn2 and after the residual addition"
        raise LayerError(
            f"Layer {name!r} cannot be tapped: a {type(parent).__name__} calls its one ReLU module "
            f"{calls} per forward pass (after {after}), so a hook on it would record only the last "
            f"call, the block's output. Tap {parent_path} for the block's output, or "
            f"{parent_path}.bn1 for the first convolution's normalised features (before that ReLU)."
        )


def build_backbone(config: ModelConfig) -> nn.Module:
    """The encoder a config describes: a :class:`ResNetBackbone` or a ViT (timm, imported lazily)."""
    if config.backbone == "vit":
        if not config.vit:
            raise ClusterprobeError("A 'vit' backbone needs its options in ModelConfig.vit.")
        from .vit import ViTBackbone

        return ViTBackbone(config.vit)
    return ResNetBackbone(
        config.backbone,
        width=config.width,
        cifar_stem=config.cifar_stem,
        stem_padding=config.stem_padding,
        in_channels=config.in_channels,
    )


def resa_projector(in_dim: int, hidden_dim: int = 2048, out_dim: int = 512) -> list[dict]:
    """ReSA's CIFAR projector: in-2048-2048-512 with BN/ReLU and a final affine-free BN."""
    return mlp_description([in_dim, hidden_dim, hidden_dim, out_dim], last_batch_norm=True)


def build_model(
    backbone: str = "resnet18",
    width: int = 64,
    cifar_stem: bool = True,
    stem_padding: int = 2,
    in_channels: int = 3,
    projector_dims: Sequence[int] | None = (2048, 2048, 512),
    projector_last_batch_norm: bool = True,
    predictor_dims: Sequence[int] | None = None,
) -> SSLModel:
    """Build an :class:`SSLModel` from sizes.

    ``projector_dims`` lists the hidden sizes and the output size (the input is H's size);
    the default is ReSA's 2048-2048-512 with a final affine-free BN. ``predictor_dims`` likewise
    (input Z), e.g. ``(2048, 512)`` for ReSA's ImageNet predictor. None leaves a head out.

    >>> build_model("resnet18", width=16, projector_dims=(256, 256, 64)).layer_names()
    ['H', 'P0', 'P1', 'Z']
    """
    out_dim = backbone_out_dim(backbone, width)
    config = ModelConfig(backbone=backbone, width=width, cifar_stem=cifar_stem,
                         stem_padding=stem_padding, in_channels=in_channels)
    if projector_dims:
        config.projector = mlp_description([out_dim, *projector_dims],
                                           last_batch_norm=projector_last_batch_norm)
    if predictor_dims:
        z_dim = int(projector_dims[-1]) if projector_dims else out_dim
        config.predictor = mlp_description([z_dim, *predictor_dims])
    return SSLModel(config)
