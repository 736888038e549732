"""Encoders: torchvision ResNets with an optional CIFAR stem and a width option.

The module names are torchvision's (``conv1``, ``bn1``, ``layer1`` ... ``layer4``, ``avgpool``),
so a torchvision state dict loads unchanged at the standard width, and any module path such as
``backbone.layer3`` can be tapped. ``fc`` is replaced by ``nn.Identity``: the backbone's output
is the pooled encoder representation **H**.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from ..errors import ClusterprobeError, closest_name

#: name -> (block type, blocks per stage)
RESNET_LAYOUTS: dict[str, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}
BACKBONES = tuple(RESNET_LAYOUTS)


def check_backbone_name(name: str) -> None:
    if name not in RESNET_LAYOUTS:
        raise ClusterprobeError(
            f"Unknown backbone {name!r}; the known backbones are {', '.join(BACKBONES)}."
            f"{closest_name(name, BACKBONES)}"
        )


def backbone_out_dim(name: str, width: int = 64) -> int:
    """Dimension of H for a backbone name and first-stage width."""
    check_backbone_name(name)
    return width * 8 * RESNET_LAYOUTS[name][0].expansion


class ResNetBackbone(ResNet):
    """A torchvision ResNet returning the globally pooled features **H** (``fc`` removed).

    Args:
        name: ``resnet18``, ``resnet34`` or ``resnet50``.
        width: channels of the first stage (torchvision: 64); stages use width x (1, 2, 4, 8).
            A width of 8-16 trains on a CPU.
        cifar_stem: replace the 7x7/stride-2 stem and max-pool by a 3x3/stride-1 convolution and
            no max-pool, as for 32x32 images.
        stem_padding: zero padding of the CIFAR stem's 3x3 convolution: 2 as in the ReSA
            reference code (a 1-pixel pad before a padding-1 conv) and solo-learn; 1 in
            checkpoints of earlier clusterprobe versions.
        in_channels: image channels.
        zero_init_residual: torchvision's option (last BN of each block starts at zero).

    Input: images of shape (batch, in_channels, height, width). Output: (batch, out_dim).
    """

    def __init__(
        self,
        name: str = "resnet18",
        width: int = 64,
        cifar_stem: bool = False,
        stem_padding: int = 2,
        in_channels: int = 3,
        zero_init_residual: bool = False,
    ):
        check_backbone_name(name)
        if width < 1:
            raise ClusterprobeError(f"Backbone width must be a positive integer, got {width}.")
        block, layers = RESNET_LAYOUTS[name]
        super().__init__(block, list(layers), zero_init_residual=zero_init_residual)
        self.name = name
        if width != 64 or in_channels != 3:
            # Rebuild the stages with torchvision's own _make_layer at the requested width.
            self.inplanes = width
            self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = self._norm_layer(width)
            self.layer1 = self._make_layer(block, width, layers[0])
            self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
            self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
            self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
            self._init_weights(zero_init_residual)
        if cifar_stem:
            # PyTorch's default initialisation, as in solo-learn and the ReSA reference code, which
            # replace torchvision's stem after building the model (not torchvision's kaiming_normal_)
            self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=stem_padding, bias=False)
            self.maxpool = nn.Identity()
        self.out_dim = width * 8 * block.expansion
        self.fc = nn.Identity()

    def _init_weights(self, zero_init_residual: bool) -> None:
        # torchvision's initialisation, applied to the rebuilt modules.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)
        if zero_init_residual:
            self.zero_init_residual()

    def zero_init_residual(self) -> None:
        """Start the last BatchNorm of every residual branch at zero (torchvision's
        ``zero_init_residual``: each block begins as the identity)."""
        for module in self.modules():
            if isinstance(module, Bottleneck) and module.bn3.weight is not None:
                nn.init.constant_(module.bn3.weight, 0)
            elif isinstance(module, BasicBlock) and module.bn2.weight is not None:
                nn.init.constant_(module.bn2.weight, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, out_dim)
        return super().forward(x)
