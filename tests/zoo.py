"""Checkpoint zoo: files laid out exactly as each SSL method's official code saves them, with an
independent reference forward for every branch (issue 12).

Every builder ``build_<format>(tmp_path, ...)`` re-creates the official model's module structure
(same attribute names and nesting, so the state-dict keys are the official ones, with the same
forward semantics), randomises every parameter and BatchNorm buffer with a seeded generator (the
momentum/teacher copy gets its own values, so a crossed key mapping cannot pass), writes the file
the way the official training script writes it (DDP ``module.`` prefixes, optimizer state, epoch,
args, ...) and returns a :class:`ZooCheckpoint` whose ``branches`` hold reference modules with
``.h(x)`` (H, the pooled encoder output), ``.z(x)`` (Z, the projector output the loss sees, before
any L2 normalisation the loss applies) and ``.hidden(x)`` (P0, P1, ...: projector hidden layers
after their activation). The code below is written for these tests; only facts were taken from
the official repositories (read at the commits fetched on the day this file was written):

ReSA, ``winci-ai/resa`` (ImageNet) and ``winci-ai/resa_cifar`` (CIFAR)
    ``main.py``: ``torch.save({"epoch", "state_dict": model.state_dict(), "optimizer"},
    "checkpoint.pth.tar")`` with ``model`` a DDP of the method (SyncBN), so keys are
    ``module.encoder.*``, ``module.projector.*``, ``module.momentum_encoder.*``,
    ``module.momentum_projector.*`` and, on ImageNet only, ``module.predictor.*`` (``--pred`` is on
    by default there; resa_cifar has no predictor at all). ``src/resnet.py``: ``self.padding =
    ConstantPad2d(1)`` before ``conv1`` (7x7/2, padding 2: effective 3, as torchvision);
    ``resa_cifar/src/model.py`` replaces ``conv1`` by a 3x3/1 conv with padding 1 (effective 2
    after the pad layer) and ``maxpool`` by ``Identity``. Projector (``src/model.py``):
    ``mlp_layers - 1`` x [Linear, BN, ReLU] then Linear, ``BatchNorm1d(emb, affine=False)``: keys
    ``projector.0/1/3/4/6/7``; Z is the output of that affine-free BN (the loss L2-normalises it).
    Predictor: Linear, BN, ReLU, Linear. Evaluation (``load_pretrained_encoder``,
    ``eval/evaluate.py``): the **momentum encoder**. Optimizer: SGD (``build_optimizer``; the CIFAR
    code's LARS-free SGD), plain state: ``weights_only=True`` loads it.
MoCo v3, ``facebookresearch/moco-v3``
    ``moco/builder.py``: ``MoCo_ResNet`` builds torchvision ResNets with ``num_classes=mlp_dim``,
    deletes their ``fc`` and puts the projector there: ``base_encoder.fc`` =
    [Linear(no bias), BN, ReLU, Linear(no bias), BN(affine=False)] (2 layers: one hidden layer),
    same for ``momentum_encoder.fc``; ``predictor`` = [Linear, BN, ReLU, Linear] (no last BN), all
    Linear without bias. The momentum update covers ``base_encoder.parameters()`` only, so the
    momentum ``fc`` is the EMA of the online one. ``main_moco.py``: ``torch.save({"epoch", "arch",
    "state_dict", "optimizer", "scaler"}, "checkpoint_%04d.pth.tar")``, model in DDP (``module.``).
    Optimizer LARS (``moco/optimizer.py``, state ``mu``), scaler a GradScaler state dict.
    ``main_lincls.py`` keeps ``module.base_encoder.*`` minus ``fc``: the **base encoder** is
    evaluated. Z = ``fc`` output (affine-free BN), before the loss' L2 normalisation.
    ViT (``vits.py``, ``MoCo_ViT``): timm 0.4.9's ``VisionTransformer`` (``--arch vit_small``:
    dim 384, depth 12, **12 heads**, where DINO's ViT-S has 6; ``pos_embed`` a fixed 2-D sin-cos
    parameter), projector in ``head`` with 3 layers ([Linear(no bias), BN, ReLU] x 2, Linear(no
    bias), BN(affine=False): ``head.0/1/3/4/6/7``), and its predictor **does** end in an affine-free
    BN (``predictor.4``), unlike the ResNet one. Default optimizer AdamW. H = CLS after the norm.
SwAV, ``facebookresearch/swav``
    ``src/resnet50.py`` defines only ResNet-50 and its wider variants (so ResNet-50 here), with the
    same ``padding`` layer + 7x7 conv padding 2 stem as ReSA. ``projection_head`` =
    [Linear, BN, ReLU, Linear] (``hidden_mlp`` > 0), then ``F.normalize`` (``normalize=True`` in
    ``main_swav.py``), then ``prototypes`` = Linear(no bias). Z = projection head output before the
    L2 normalisation. ``main_swav.py``: ``{"epoch", "state_dict", "optimizer"}`` + ``"amp"``
    (apex, ``use_fp16`` on by default) into ``checkpoint.pth.tar``; model in DDP: keys
    ``module.conv1.weight`` .. ``module.projection_head.*``, ``module.prototypes.weight``. The
    optimizer is apex's LARC around SGD, whose ``state_dict`` is the SGD one. Evaluation
    (``eval_linear.py``) strips ``module.`` and uses the backbone: one branch, ``online``.
DINO, ``facebookresearch/dino``
    ``main_dino.py``: ``save_dict = {"student", "teacher", "optimizer", "epoch", "args",
    "dino_loss"}`` + ``"fp16_scaler"`` (``use_fp16`` defaults to True) into ``checkpoint.pth``.
    **The student is always in DDP, so its keys start with ``module.``**; the teacher is wrapped in
    DDP only when the network has BatchNorm (``has_batchnorms``: every ResNet), so a ResNet
    checkpoint has ``module.backbone.*``/``module.head.*`` in both, a ViT one (no BN in the head)
    has plain ``backbone.*``/``head.*`` in the teacher. ``MultiCropWrapper`` sets the torchvision
    ResNet's ``fc`` (and ``head``) to Identity: ``backbone.*`` has no ``fc``. ``DINOHead``: ``mlp``
    = Linear, [BN], GELU, Linear, [BN], GELU, Linear (``nlayers=3``; hidden 2048 and bottleneck 256
    are constructor defaults that ``main_dino.py`` does not expose: the fixture passes smaller
    ones); then ``F.normalize`` and ``last_layer`` = weight-normed Linear(no bias):
    ``head.last_layer.weight_g``/``weight_v``. Z = ``head.mlp`` output (the bottleneck, before the
    normalisation). ``args`` is an ``argparse.Namespace`` (so ``weights_only=True`` refuses the
    file), ``dino_loss`` = ``{"center"}``. Evaluation (``eval_knn.py``/``eval_linear.py``,
    ``--checkpoint_key teacher``) takes the **teacher** and strips ``module.`` and ``backbone.``.
    The ViT release ``dino_deitsmall16_pretrain.pth`` is the plain state dict of
    ``vit_small(patch_size=16, num_classes=0)`` (``hubconf.py`` loads it ``strict=True``): keys
    ``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.N.{norm1, attn.qkv, attn.proj,
    norm2, mlp.fc1, mlp.fc2}.*``, ``norm.*``; DINO's own ``VisionTransformer`` (not timm):
    pre-norm blocks, LayerNorm eps 1e-6, qkv bias, H = CLS token after the final norm.
VICReg, ``facebookresearch/vicreg``
    ``resnet.py`` (same padding-layer stem as ReSA) defines resnet34, resnet50 and wider, **no
    resnet18**: ResNet-34 here. ``Projector``: [Linear, BN, ReLU] x (len - 2), then
    Linear(no bias); no final BN; Z = its output. ``main_vicreg.py``: ``torch.save(dict(epoch,
    model=model.state_dict(), optimizer=optimizer.state_dict()), "model.pth")`` with DDP keys
    ``module.backbone.*``, ``module.projector.*``; LARS with ``weight_decay_filter`` and
    ``lars_adaptation_filter`` = the script's module-level ``exclude_bias_and_norm``, so every
    param group pickles ``__main__.exclude_bias_and_norm``; unpickling it anywhere else fails (an
    AttributeError on ``__main__``). ``evaluate.py`` keeps ``module.backbone.*``: one branch.
Barlow Twins, ``facebookresearch/barlowtwins``
    ``main.py``: ``torchvision.models.resnet50(zero_init_residual=True)`` hard-coded (ResNet-50
    here), ``backbone.fc = Identity``; ``projector`` = [Linear(no bias), BN, ReLU] x (len - 2),
    Linear(no bias); ``self.bn = BatchNorm1d(last, affine=False)`` applied to both projections
    before the cross-correlation: Z = ``bn(projector(h))``. ``torch.save(dict(epoch,
    model=model.state_dict(), optimizer=optimizer.state_dict()), "checkpoint.pth")``, DDP keys
    ``module.backbone.*``, ``module.projector.*``, ``module.bn.*`` (running stats only). LARS with
    ``weight_decay_filter=True``/``lars_adaptation_filter=True`` (booleans; the filter is a
    method), so the file loads with ``weights_only=True``.
lightly, ``lightly-ai/lightly``
    ``examples/pytorch/byol.py``: ``backbone = nn.Sequential(*list(resnet18().children())[:-1])``
    (children 0 conv1, 1 bn1, 2 relu, 3 maxpool, 4-7 layer1-4, 8 avgpool: keys ``backbone.0``,
    ``backbone.1``, ``backbone.4`` .. ``backbone.7``), ``projection_head =
    BYOLProjectionHead``, ``prediction_head = BYOLPredictionHead``, ``backbone_momentum`` and
    ``projection_head_momentum`` deep copies; H = ``backbone(x).flatten(1)``. ``ProjectionHead``
    (``lightly/models/modules/heads.py``) puts Linear, [BN], [act] per block in ``layers``, with
    ``bias = not batch_norm`` unless given: BYOL heads are ``layers.0`` Linear(no bias),
    ``layers.1`` BN, ReLU, ``layers.3`` Linear(bias); ``SimCLRProjectionHead`` (batch_norm=True) is
    Linear(no bias), BN, ReLU, Linear(no bias), **BatchNorm1d(out) with affine**: its Z includes
    that last BN. The examples save nothing; a user's ``torch.save(model.state_dict())`` is what
    ``build_lightly_byol``/``build_lightly_simclr`` write. The SimCLR tutorial
    (``docs/source/tutorials_source/package/tutorial_simclr_clothing.py``) saves
    ``{"resnet18_parameters": model.backbone.state_dict()}`` (keys ``0.weight``, ``4.0.conv1``,
    ...): ``build_lightly_tutorial``. Evaluation in lightly's examples and benchmarks uses the online
    ``backbone``.

Where the official code differs from what the brief for these fixtures said:

* DINO: the state dicts are **not** plain ``backbone.*``/``head.*``: ``student`` is always saved
  from its DDP wrapper (``module.backbone.*``, ``module.head.*``), and ``teacher`` too whenever
  the network has BatchNorm (every ResNet); only a BN-free ViT teacher has plain keys.
* ReSA ImageNet (``winci-ai/resa``) has ``--pred`` on by default: its checkpoint also holds
  ``module.predictor.*`` (online branch only); ``winci-ai/resa_cifar`` has no predictor.
* VICReg's ``resnet.py`` defines resnet34 (smallest), resnet50, resnet101, resnet50x2/x4/x5,
  resnet200x2: no resnet18, so the fixture uses ResNet-34, not ResNet-50.
* SwAV also saves ``"amp"`` (apex loss-scaler state; ``use_fp16`` defaults to True).
* lightly's examples (``examples/pytorch/byol.py``, ``simclr.py``) save nothing; the one save in
  its tutorials writes ``{"resnet18_parameters": model.backbone.state_dict()}`` (keys ``0.*`` ..
  ``7.*``, no ``backbone.`` prefix). ``SimCLRProjectionHead`` ends in an affine BatchNorm1d that
  is part of Z; BYOL/SimCLR hidden Linears have no bias (``bias = not batch_norm``).
* MoCo v3 writes ``checkpoint_%04d.pth.tar`` per epoch; ViT-S there has 12 heads (see above).
* Barlow Twins' LARS filters are booleans (``weight_decay_filter=True``), not functions: only
  VICReg's file needs a stub to unpickle.

Fixture choices: projector widths 64/32 (DINO: hidden 64, bottleneck 32, out_dim 16), ResNet-18
where ``--arch`` allows it; ``build_dino_vit``'s one branch is called ``teacher`` (the released
backbone is DINO's teacher); ``build_lightly_tutorial``'s format is ``lightly``, branch ``online``.

Optimizer state: the param groups are those of the official optimizer (its hyperparameters, its
groups, VICReg's pickled function); the per-parameter state has the official keys and shapes but
shares storage with the weights, so the files are no bigger than the weights.
"""

from __future__ import annotations

import argparse
import math
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ZooCheckpoint",
    "build_resa_cifar",
    "build_resa_imagenet",
    "build_mocov3",
    "build_mocov3_vit",
    "build_swav",
    "build_dino",
    "build_dino_bnhead",
    "build_dino_vit",
    "build_vicreg",
    "build_barlowtwins",
    "build_lightly_byol",
    "build_lightly_simclr",
    "build_lightly_tutorial",
]


@dataclass
class ZooCheckpoint:
    """A checkpoint file as the official code writes it, with reference forwards per branch."""

    path: Path
    format: str
    default_branch: str
    branches: dict[str, nn.Module]
    image_size: int
    notes: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# Randomised weights


def randomise(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Give every parameter and BatchNorm buffer a random, well-scaled value (running_var > 0)."""
    with torch.no_grad():
        for mod in module.modules():
            norm = isinstance(mod, (nn.modules.batchnorm._NormBase, nn.LayerNorm))
            for name, p in mod.named_parameters(recurse=False):
                if norm and name == "weight":
                    p.copy_(0.5 + torch.rand(p.shape, generator=generator))
                elif name == "weight_g":
                    p.copy_(0.5 + torch.rand(p.shape, generator=generator))
                elif p.dim() >= 2 and name != "pos_embed" and name != "cls_token":
                    fan_in = p[0].numel()
                    p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(fan_in))
                else:  # biases, norm shifts, tokens
                    p.copy_(0.2 * torch.randn(p.shape, generator=generator))
            for name, b in mod.named_buffers(recurse=False):
                if name == "running_mean":
                    b.copy_(0.2 * torch.randn(b.shape, generator=generator))
                elif name == "running_var":
                    b.copy_(0.5 + 1.5 * torch.rand(b.shape, generator=generator))
                elif name == "num_batches_tracked":
                    b.fill_(int(torch.randint(100, 10_000, (1,), generator=generator)))
                elif b.is_floating_point():
                    b.copy_(torch.randn(b.shape, generator=generator))
    return module


# ----------------------------------------------------------------------------------------------
# ResNets: torchvision's attribute names (conv1, bn1, relu, maxpool, layer1-4, avgpool, fc), with
# the optional ``padding`` layer of the ReSA/SwAV/VICReg code bases.


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _shortcut(cin, planes, stride)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        skip = x if self.downsample is None else self.downsample(x)
        return self.relu(y + skip)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * 4
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # stride on the 3x3 (v1.5)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(cin, out, stride)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        skip = x if self.downsample is None else self.downsample(x)
        return self.relu(y + skip)


def _shortcut(cin: int, cout: int, stride: int):
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


DEPTHS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)), 50: (Bottleneck, (3, 4, 6, 3))}


class ResNet(nn.Module):
    """A ResNet whose state-dict keys are torchvision's (plus nothing for the pad layer).

    ``pad_layer``: the ReSA/SwAV/VICReg stem, ``self.padding = ConstantPad2d(1)`` then ``conv1``
    with padding 2 (ImageNet 7x7/2) or 1 (CIFAR 3x3/1). Without it: torchvision's stem (7x7/2
    padding 3). ``cifar``: 3x3/1 conv1 and ``maxpool = Identity``. ``forward`` returns
    ``fc(H)`` when ``fc`` is set (torchvision semantics), ``forward_features`` returns H.
    """

    def __init__(self, depth: int = 18, *, pad_layer: bool = False, cifar: bool = False, fc: nn.Module | None = None):
        super().__init__()
        block, counts = DEPTHS[depth]
        if pad_layer:
            self.padding = nn.ConstantPad2d(1, 0.0)
        if cifar:
            self.conv1 = nn.Conv2d(3, 64, 3, 1, 1 if pad_layer else 2, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 2 if pad_layer else 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if cifar else nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), counts)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, 2 if (j == 0 and i > 0) else 1))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dim = cin
        if fc is not None:
            self.fc = fc

    def forward_features(self, x):
        if hasattr(self, "padding"):
            x = self.padding(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x):
        h = self.forward_features(x)
        return self.fc(h) if hasattr(self, "fc") else h


# ----------------------------------------------------------------------------------------------
# Heads


def mlp(dims, *, bias=True, last_bias=None, bn=True, act=nn.ReLU, last: nn.Module | None = None) -> nn.Sequential:
    """[Linear, BN?, act] per hidden layer, then Linear (+ ``last``): the common projector."""
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-2], dims[1:-1]):
        layers.append(nn.Linear(a, b, bias=bias))
        if bn:
            layers.append(nn.BatchNorm1d(b))
        layers.append(act())
    layers.append(nn.Linear(dims[-2], dims[-1], bias=bias if last_bias is None else last_bias))
    if last is not None:
        layers.append(last)
    return nn.Sequential(*layers)


class WeightNormLinear(nn.Module):
    """Linear without bias, weight = g * v / ||v|| per output row (keys weight_g, weight_v)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(cout, 1))
        self.weight_v = nn.Parameter(torch.randn(cout, cin))

    def forward(self, x):
        weight = self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)
        return x @ weight.t()


class DINOHead(nn.Module):
    def __init__(self, cin: int, cout: int, *, use_bn: bool = False, hidden: int = 64, bottleneck: int = 32):
        super().__init__()
        self.mlp = mlp((cin, hidden, hidden, bottleneck), bn=use_bn, act=nn.GELU)
        self.last_layer = WeightNormLinear(bottleneck, cout)

    def forward(self, x):
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))


class MultiCropWrapper(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x):
        return self.head(self.backbone(x))


# ----------------------------------------------------------------------------------------------
# DINO's Vision Transformer (its own class; timm names)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # b, heads, n, c/heads
        weights = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(c // self.heads), dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """DINO's ViT: H = CLS token after the final LayerNorm (``forward`` of ``num_classes=0``)."""

    def __init__(self, image_size: int = 224, patch: int = 16, dim: int = 384, depth: int = 12, heads: int = 6):
        super().__init__()
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (image_size // patch) ** 2 + 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Identity()

    def forward_features(self, x):
        tokens = self.patch_embed(x)
        if tokens.shape[1] + 1 != self.pos_embed.shape[1]:
            raise ValueError("the reference ViT does not interpolate position embeddings")
        x = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 0]

    def forward(self, x):
        return self.head(self.forward_features(x))


# ----------------------------------------------------------------------------------------------
# Reference forwards


class Reference(nn.Module):
    """One branch: ``h`` = encoder features, ``z`` = projector output (then ``after``, e.g.
    Barlow Twins' affine-free ``bn``), ``hidden`` = outputs of the projector's activations."""

    def __init__(self, encoder: nn.Module, projector: nn.Sequential | None = None, after: nn.Module | None = None):
        super().__init__()
        self.encoder = encoder
        self.projector = projector
        self.after = after

    def h(self, x):
        if hasattr(self.encoder, "forward_features"):
            return self.encoder.forward_features(x)
        return torch.flatten(self.encoder(x), 1)  # lightly: backbone(x).flatten(start_dim=1)

    def z(self, x):
        z = self.projector(self.h(x))
        return z if self.after is None else self.after(z)

    def hidden(self, x):
        y, taps = self.h(x), []
        for layer in self.projector:
            y = layer(y)
            if isinstance(layer, (nn.ReLU, nn.GELU)):
                taps.append(y.clone())
        return taps


def _reference(encoder, projector=None, after=None) -> Reference:
    ref = Reference(encoder, projector, after)
    return _deepcopy_eval(ref)


def _deepcopy_eval(module: nn.Module) -> nn.Module:
    import copy

    module = copy.deepcopy(module).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class EncoderReference(nn.Module):
    """An encoder-only file: ``h`` alone (no ``z``, no ``hidden``)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    h = Reference.h


# ----------------------------------------------------------------------------------------------
# Saving helpers


def _ddp(state: dict) -> dict:
    """Keys as ``DistributedDataParallel(model).state_dict()`` writes them."""
    return {f"module.{k}": v for k, v in state.items()}


class _CustomOptimizer(torch.optim.Optimizer):
    """Stands for the official LARS classes: ``Optimizer.state_dict`` of given defaults."""

    def __init__(self, params, defaults):
        super().__init__(params, defaults)

    def step(self, closure=None):  # pragma: no cover - never stepped
        raise NotImplementedError


def _optimizer_state(optimizer: torch.optim.Optimizer, key: str | tuple[str, ...], step: int | None = None) -> dict:
    """The optimizer's state dict after training: ``key`` (e.g. ``momentum_buffer``, ``mu``) for
    every parameter that gets gradients (frozen momentum copies get none), sharing the weights'
    storage so that the file stays as small as the weights; ``step`` as Adam keeps it."""
    keys = (key,) if isinstance(key, str) else key
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.requires_grad:
                optimizer.state[p] = {k: p.detach() for k in keys}
                if step is not None:
                    optimizer.state[p]["step"] = torch.tensor(float(step))
    return optimizer.state_dict()


def _freeze(*modules: nn.Module) -> None:
    """``requires_grad = False``, as the official code sets it on momentum/teacher copies."""
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(False)


def _grad_scaler_state() -> dict:
    """``torch.cuda.amp.GradScaler().state_dict()`` after some steps on a GPU."""
    return {"scale": 32768.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
            "_growth_tracker": 417}


def _folder(tmp_path) -> Path:
    folder = Path(tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# ReSA


class _ReSA(nn.Module):
    def __init__(self, *, cifar: bool, arch: int, mlp_dim: int, emb: int, mlp_layers: int, predictor: bool):
        super().__init__()
        self.encoder = ResNet(arch, pad_layer=True, cifar=cifar)
        dims = (self.encoder.dim,) + (mlp_dim,) * (mlp_layers - 1) + (emb,)
        self.projector = mlp(dims, last=nn.BatchNorm1d(emb, affine=False))
        if predictor:
            self.predictor = mlp((emb, mlp_dim, emb))
        self.momentum_encoder = ResNet(arch, pad_layer=True, cifar=cifar)
        self.momentum_projector = mlp(dims, last=nn.BatchNorm1d(emb, affine=False))


def _build_resa(tmp_path, *, cifar: bool, seed: int, mlp_dim: int, emb: int, epoch: int) -> ZooCheckpoint:
    model = _ReSA(cifar=cifar, arch=18, mlp_dim=mlp_dim, emb=emb, mlp_layers=3, predictor=not cifar)
    randomise(model, _generator(seed))
    _freeze(model.momentum_encoder, model.momentum_projector)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3 if cifar else 0.5, momentum=0.9,
                                weight_decay=1e-4 if cifar else 1e-5)
    path = _folder(tmp_path) / "checkpoint.pth.tar"
    torch.save({"epoch": epoch, "state_dict": _ddp(model.state_dict()),
                "optimizer": _optimizer_state(optimizer, "momentum_buffer")}, path)
    branches = {"online": _reference(model.encoder, model.projector),
                "momentum": _reference(model.momentum_encoder, model.momentum_projector)}
    stem = ("ConstantPad2d(1) then conv1 3x3 stride 1 padding 1 (effective padding 2), no max-pool"
            if cifar else "ConstantPad2d(1) then conv1 7x7 stride 2 padding 2 (effective 3), max-pool")
    return ZooCheckpoint(path, "resa", "momentum", branches, 32 if cifar else 64, {
        "source": "winci-ai/resa_cifar" if cifar else "winci-ai/resa",
        "arch": "resnet18", "stem": stem, "stem_padding": "2" if cifar else "3",
        "head_activation": "relu",
        "z": "projector output after its affine-free BatchNorm1d (the loss L2-normalises it)",
        "predictor": "none (resa_cifar has none)" if cifar else "module.predictor.* (online branch only)",
        "eval_branch": "momentum encoder (load_pretrained_encoder / eval: module.momentum_encoder)",
    })


def build_resa_cifar(tmp_path, *, seed: int = 1, mlp_dim: int = 64, emb: int = 32, epoch: int = 200) -> ZooCheckpoint:
    """ReSA CIFAR (``winci-ai/resa_cifar``): ResNet-18, CIFAR stem with effective padding 2."""
    return _build_resa(tmp_path, cifar=True, seed=seed, mlp_dim=mlp_dim, emb=emb, epoch=epoch)


def build_resa_imagenet(tmp_path, *, seed: int = 2, mlp_dim: int = 64, emb: int = 32, epoch: int = 100) -> ZooCheckpoint:
    """ReSA ImageNet (``winci-ai/resa``): ResNet-18 (``--arch``), pad layer + 7x7 stem, predictor."""
    return _build_resa(tmp_path, cifar=False, seed=seed, mlp_dim=mlp_dim, emb=emb, epoch=epoch)


# ----------------------------------------------------------------------------------------------
# MoCo v3


class _MoCoResNet(nn.Module):
    def __init__(self, arch: int, dim: int, mlp_dim: int):
        super().__init__()
        self.base_encoder = ResNet(arch)
        self.momentum_encoder = ResNet(arch)
        hidden = self.base_encoder.dim
        self.base_encoder.fc = mlp((hidden, mlp_dim, dim), bias=False, last=nn.BatchNorm1d(dim, affine=False))
        self.momentum_encoder.fc = mlp((hidden, mlp_dim, dim), bias=False, last=nn.BatchNorm1d(dim, affine=False))
        self.predictor = mlp((dim, mlp_dim, dim), bias=False)


def build_mocov3(tmp_path, *, seed: int = 3, dim: int = 32, mlp_dim: int = 64, epoch: int = 100) -> ZooCheckpoint:
    """MoCo v3 ResNet-18 (``--arch resnet18``, torchvision): projector in ``fc``, predictor."""
    model = _MoCoResNet(18, dim, mlp_dim)
    randomise(model, _generator(seed))
    _freeze(model.momentum_encoder)
    optimizer = _CustomOptimizer(model.parameters(), dict(lr=0.6, weight_decay=1e-6, momentum=0.9,
                                                          trust_coefficient=0.001))
    path = _folder(tmp_path) / f"checkpoint_{epoch - 1:04d}.pth.tar"
    torch.save({"epoch": epoch, "arch": "resnet18", "state_dict": _ddp(model.state_dict()),
                "optimizer": _optimizer_state(optimizer, "mu"), "scaler": _grad_scaler_state()}, path)
    branches = {"online": _reference(model.base_encoder, model.base_encoder.fc),
                "momentum": _reference(model.momentum_encoder, model.momentum_encoder.fc)}
    return ZooCheckpoint(path, "mocov3", "online", branches, 64, {
        "source": "facebookresearch/moco-v3", "arch": "resnet18 (torchvision, zero_init_residual)",
        "stem": "torchvision: conv1 7x7 stride 2 padding 3, max-pool", "stem_padding": "3",
        "head_activation": "relu",
        "z": "base_encoder.fc output: Linear-BN-ReLU-Linear-BN(affine=False), before L2 normalisation",
        "predictor": "module.predictor.* = Linear-BN-ReLU-Linear (no last BN), online branch only",
        "eval_branch": "base encoder (main_lincls keeps module.base_encoder.* minus fc)",
    })


class _MoCoViT(nn.Module):
    def __init__(self, dim: int, mlp_dim: int):
        super().__init__()
        self.base_encoder = VisionTransformer(224, 16, 384, 12, 12)  # vits.vit_small: 12 heads, not 6
        self.momentum_encoder = VisionTransformer(224, 16, 384, 12, 12)
        for encoder in (self.base_encoder, self.momentum_encoder):
            encoder.head = mlp((384, mlp_dim, mlp_dim, dim), bias=False, last=nn.BatchNorm1d(dim, affine=False))
        self.predictor = mlp((dim, mlp_dim, dim), bias=False, last=nn.BatchNorm1d(dim, affine=False))


def build_mocov3_vit(tmp_path, *, seed: int = 13, dim: int = 32, mlp_dim: int = 64, epoch: int = 300) -> ZooCheckpoint:
    """MoCo v3 ViT-S/16 (``--arch vit_small``: timm 0.4.9 ViT with 12 heads), projector in ``head``."""
    model = _MoCoViT(dim, mlp_dim)
    randomise(model, _generator(seed))
    _freeze(model.momentum_encoder)
    model.base_encoder.pos_embed.requires_grad_(False)  # fixed 2-D sin-cos embedding
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.5e-4 * 4096 / 256, weight_decay=0.1)
    path = _folder(tmp_path) / f"checkpoint_{epoch - 1:04d}.pth.tar"
    torch.save({"epoch": epoch, "arch": "vit_small", "state_dict": _ddp(model.state_dict()),
                "optimizer": _optimizer_state(optimizer, ("exp_avg", "exp_avg_sq"), step=313 * epoch),
                "scaler": _grad_scaler_state()}, path)
    branches = {"online": _reference(model.base_encoder, model.base_encoder.head),
                "momentum": _reference(model.momentum_encoder, model.momentum_encoder.head)}
    return ZooCheckpoint(path, "mocov3", "online", branches, 224, {
        "source": "facebookresearch/moco-v3 (vits.py, moco/builder.py MoCo_ViT)",
        "arch": "vit_small: patch 16, dim 384, depth 12, **12 heads**, LayerNorm eps 1e-6, qkv bias (timm 0.4.9 "
                "VisionTransformer); pos_embed a fixed 2-D sin-cos parameter",
        "stem": "patch embedding 16x16", "head_activation": "relu",
        "h": "CLS token after the final norm (timm forward_features)",
        "z": "base_encoder.head output: 3 layers, Linear(no bias)-BN-ReLU x2, Linear(no bias)-BN(affine=False)",
        "predictor": "module.predictor.*: Linear-BN-ReLU-Linear-BN(affine=False) (the ViT one has a last BN)",
        "eval_branch": "base encoder (main_lincls keeps module.base_encoder.* minus head)",
    })


# ----------------------------------------------------------------------------------------------
# SwAV


class _SwAVResNet(ResNet):
    def __init__(self, hidden_mlp: int, output_dim: int, nmb_prototypes: int):
        super().__init__(50, pad_layer=True)
        self.projection_head = mlp((self.dim, hidden_mlp, output_dim))
        self.prototypes = nn.Linear(output_dim, nmb_prototypes, bias=False)

    def forward(self, x):
        z = F.normalize(self.projection_head(self.forward_features(x)), dim=1, p=2)
        return z, self.prototypes(z)


def build_swav(tmp_path, *, seed: int = 4, hidden_mlp: int = 64, feat_dim: int = 32, nmb_prototypes: int = 16,
               epoch: int = 100) -> ZooCheckpoint:
    """SwAV (``main_swav.py``, ``src/resnet50.py``): ResNet-50 only, pad-layer stem."""
    model = _SwAVResNet(hidden_mlp, feat_dim, nmb_prototypes)
    randomise(model, _generator(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=4.8, momentum=0.9, weight_decay=1e-6)
    path = _folder(tmp_path) / "checkpoint.pth.tar"
    torch.save({"epoch": epoch, "state_dict": _ddp(model.state_dict()),
                "optimizer": _optimizer_state(optimizer, "momentum_buffer"),
                "amp": {"loss_scaler0": {"loss_scale": 32768.0, "unskipped": 211}}}, path)
    return ZooCheckpoint(path, "swav", "online", {"online": _reference(model, model.projection_head)}, 64, {
        "source": "facebookresearch/swav", "arch": "resnet50 (src/resnet50.py defines no ResNet-18)",
        "stem": "ConstantPad2d(1) then conv1 7x7 stride 2 padding 2 (effective 3), max-pool",
        "stem_padding": "3", "head_activation": "relu",
        "z": "projection_head output (Linear-BN-ReLU-Linear), before F.normalize and the prototypes",
        "eval_branch": "the one network (eval_linear strips module.)",
    })


# ----------------------------------------------------------------------------------------------
# DINO


def _dino_args(**changes) -> argparse.Namespace:
    """``get_args_parser()`` defaults of ``main_dino.py`` plus what ``init_distributed_mode`` sets."""
    args = dict(
        arch="vit_small", patch_size=16, out_dim=65536, norm_last_layer=True, momentum_teacher=0.996,
        use_bn_in_head=False, warmup_teacher_temp=0.04, teacher_temp=0.04, warmup_teacher_temp_epochs=0,
        use_fp16=True, weight_decay=0.04, weight_decay_end=0.4, clip_grad=3.0, batch_size_per_gpu=64,
        epochs=100, freeze_last_layer=1, lr=0.0005, warmup_epochs=10, min_lr=1e-6, optimizer="adamw",
        drop_path_rate=0.1, global_crops_scale=(0.4, 1.0), local_crops_number=8,
        local_crops_scale=(0.05, 0.4), data_path="/path/to/imagenet/train/", output_dir=".",
        saveckp_freq=20, seed=0, num_workers=10, dist_url="env://", local_rank=0,
        rank=0, world_size=8, gpu=0,
    )
    args.update(changes)
    return argparse.Namespace(**args)


def _dino_params_groups(model: nn.Module) -> list[dict]:
    regularized, not_regularized = [], []
    for name, p in model.named_parameters():
        (not_regularized if name.endswith(".bias") or p.dim() == 1 else regularized).append(p)
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]


def build_dino(tmp_path, *, seed: int = 5, use_bn_in_head: bool = False, out_dim: int = 16, hidden: int = 64,
               bottleneck: int = 32, epoch: int = 100) -> ZooCheckpoint:
    """DINO full checkpoint with a torchvision ResNet-18 (``--arch resnet18 --optimizer sgd``)."""
    def network():
        backbone = ResNet(18)  # MultiCropWrapper replaces fc (and head) by Identity: no fc keys
        return MultiCropWrapper(backbone, DINOHead(backbone.dim, out_dim, use_bn=use_bn_in_head,
                                                   hidden=hidden, bottleneck=bottleneck))

    student, teacher = network(), network()
    generator = _generator(seed)
    randomise(student, generator)
    randomise(teacher, generator)
    optimizer = torch.optim.SGD(_dino_params_groups(student), lr=0, momentum=0.9)
    args = _dino_args(arch="resnet18", optimizer="sgd", lr=0.03, weight_decay=1e-4, weight_decay_end=1e-4,
                      global_crops_scale=(0.14, 1.0), local_crops_scale=(0.05, 0.14), out_dim=out_dim,
                      use_bn_in_head=use_bn_in_head, output_dir="/checkpoint/dino_rn18")
    path = _folder(tmp_path) / "checkpoint.pth"
    torch.save({
        "student": _ddp(student.state_dict()),  # always DistributedDataParallel
        "teacher": _ddp(teacher.state_dict()),  # DDP too: the network has BatchNorm
        "optimizer": _optimizer_state(optimizer, "momentum_buffer"),
        "epoch": epoch,
        "args": args,
        "dino_loss": {"center": torch.randn(1, out_dim, generator=generator)},
        "fp16_scaler": _grad_scaler_state(),
    }, path)
    branches = {name: _reference(net.backbone, net.head.mlp) for name, net in (("student", student), ("teacher", teacher))}
    return ZooCheckpoint(path, "dino", "teacher", branches, 64, {
        "source": "facebookresearch/dino", "arch": "resnet18 (torchvision; fc = Identity)",
        "stem": "torchvision: conv1 7x7 stride 2 padding 3, max-pool", "stem_padding": "3",
        "head_activation": "gelu",
        "head_bn": "BatchNorm1d after each hidden Linear" if use_bn_in_head else "none (use_bn_in_head=False)",
        "z": "head.mlp output (the bottleneck), before F.normalize and the weight-normed last_layer",
        "eval_branch": "teacher (--checkpoint_key teacher)",
        "prefixes": "student and teacher both under module. (teacher in DDP because of BatchNorm)",
    })


def build_dino_bnhead(tmp_path, *, seed: int = 6) -> ZooCheckpoint:
    """DINO ResNet-18 with ``--use_bn_in_head true``: BN shifts the head's indices."""
    return build_dino(tmp_path, seed=seed, use_bn_in_head=True)


def build_dino_vit(tmp_path, *, seed: int = 7) -> ZooCheckpoint:
    """DINO's ViT-S/16 backbone release (``dino_deitsmall16_pretrain.pth``): a plain state dict."""
    model = randomise(VisionTransformer(224, 16, 384, 12, 6), _generator(seed))
    path = _folder(tmp_path) / "dino_deitsmall16_pretrain.pth"
    torch.save(model.state_dict(), path)
    return ZooCheckpoint(path, "dino-vit", "teacher", {"teacher": _deepcopy_eval(EncoderReference(model))}, 224, {
        "source": "facebookresearch/dino (vision_transformer.py, hubconf.py)",
        "arch": "vit_small, patch 16, dim 384, depth 12, 6 heads, LayerNorm eps 1e-6, qkv bias",
        "h": "CLS token after the final norm", "z": "none (backbone only)",
        "eval_branch": "teacher (the released backbone is the teacher's)",
    })


# ----------------------------------------------------------------------------------------------
# VICReg


def exclude_bias_and_norm(p):
    """The module-level filter of ``main_vicreg.py``; the file names it ``__main__.exclude_bias_and_norm``."""
    return p.ndim == 1


def _as_training_script_function(function):
    """A copy of ``function`` that pickles as ``__main__.<name>``, as in a run of the training script."""
    copy = types.FunctionType(function.__code__, function.__globals__, function.__name__)
    copy.__module__ = "__main__"
    copy.__qualname__ = function.__name__
    return copy


class _VICReg(nn.Module):
    def __init__(self, arch: int, mlp_spec: str):
        super().__init__()
        self.backbone = ResNet(arch, pad_layer=True)
        dims = [self.backbone.dim] + [int(d) for d in mlp_spec.split("-")]
        self.projector = mlp(dims, last_bias=False)


def build_vicreg(tmp_path, *, seed: int = 8, mlp_spec: str = "64-64-32", epoch: int = 100) -> ZooCheckpoint:
    """VICReg ``model.pth`` (``--arch resnet34``, its smallest): optimizer pickles a script function."""
    model = _VICReg(34, mlp_spec)
    randomise(model, _generator(seed))
    function = _as_training_script_function(exclude_bias_and_norm)
    optimizer = _CustomOptimizer(model.parameters(), dict(lr=0, weight_decay=1e-6, momentum=0.9, eta=0.001,
                                                          weight_decay_filter=function,
                                                          lars_adaptation_filter=function))
    path = _folder(tmp_path) / "model.pth"
    main = sys.modules["__main__"]
    missing = object()
    previous = getattr(main, function.__name__, missing)
    setattr(main, function.__name__, function)  # pickle checks that __main__.<name> is this function
    try:
        torch.save(dict(epoch=epoch, model=_ddp(model.state_dict()), optimizer=_optimizer_state(optimizer, "mu")), path)
    finally:
        if previous is missing:
            delattr(main, function.__name__)
        else:
            setattr(main, function.__name__, previous)
    return ZooCheckpoint(path, "vicreg", "online", {"online": _reference(model.backbone, model.projector)}, 64, {
        "source": "facebookresearch/vicreg", "arch": "resnet34 (resnet.py has no resnet18)",
        "stem": "ConstantPad2d(1) then conv1 7x7 stride 2 padding 2 (effective 3), max-pool",
        "stem_padding": "3", "head_activation": "relu",
        "z": "projector output (last Linear without bias, no BatchNorm after it)",
        "pickle": "optimizer param_groups hold __main__.exclude_bias_and_norm (weight_decay_filter, "
                  "lars_adaptation_filter)",
        "eval_branch": "the one network (evaluate.py keeps module.backbone.*)",
    })


# ----------------------------------------------------------------------------------------------
# Barlow Twins


class _BarlowTwins(nn.Module):
    def __init__(self, projector: str):
        super().__init__()
        self.backbone = ResNet(50)  # torchvision resnet50, fc = Identity: no fc keys
        sizes = [2048] + [int(d) for d in projector.split("-")]
        self.projector = mlp(sizes, bias=False)
        self.bn = nn.BatchNorm1d(sizes[-1], affine=False)


def build_barlowtwins(tmp_path, *, seed: int = 9, projector: str = "64-64-32", epoch: int = 300) -> ZooCheckpoint:
    """Barlow Twins ``checkpoint.pth`` (torchvision ResNet-50, hard-coded): Z after ``bn``."""
    model = _BarlowTwins(projector)
    randomise(model, _generator(seed))
    weights = [p for p in model.parameters() if p.ndim != 1]
    biases = [p for p in model.parameters() if p.ndim == 1]
    optimizer = _CustomOptimizer([{"params": weights}, {"params": biases}],
                                 dict(lr=0, weight_decay=1.5e-6, momentum=0.9, eta=0.001,
                                      weight_decay_filter=True, lars_adaptation_filter=True))
    path = _folder(tmp_path) / "checkpoint.pth"
    torch.save(dict(epoch=epoch, model=_ddp(model.state_dict()), optimizer=_optimizer_state(optimizer, "mu")), path)
    return ZooCheckpoint(path, "barlowtwins", "online",
                         {"online": _reference(model.backbone, model.projector, model.bn)}, 64, {
        "source": "facebookresearch/barlowtwins", "arch": "resnet50 (torchvision, hard-coded in main.py)",
        "stem": "torchvision: conv1 7x7 stride 2 padding 3, max-pool", "stem_padding": "3",
        "head_activation": "relu",
        "z": "bn(projector(h)): the affine-free module.bn is what the cross-correlation sees",
        "eval_branch": "the one network (resnet50.pth = module.backbone)",
    })


# ----------------------------------------------------------------------------------------------
# lightly


def _lightly_backbone() -> nn.Sequential:
    """``nn.Sequential(*list(torchvision.models.resnet18().children())[:-1])``."""
    r = ResNet(18)
    return nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3, r.layer4, r.avgpool)


def _lightly_head(dims, *, last_bn: bool = False) -> nn.Module:
    """lightly's ProjectionHead: ``layers`` = Linear(bias = no BN), BN, ReLU ... per block."""
    head = nn.Module()
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-2], dims[1:-1]):
        layers += [nn.Linear(a, b, bias=False), nn.BatchNorm1d(b), nn.ReLU()]
    layers.append(nn.Linear(dims[-2], dims[-1], bias=not last_bn))
    if last_bn:
        layers.append(nn.BatchNorm1d(dims[-1]))
    head.layers = nn.Sequential(*layers)
    return head


class _BYOL(nn.Module):
    def __init__(self, hidden: int, out: int):
        super().__init__()
        self.backbone = _lightly_backbone()
        self.projection_head = _lightly_head((512, hidden, out))
        self.prediction_head = _lightly_head((out, hidden, out))
        self.backbone_momentum = _lightly_backbone()
        self.projection_head_momentum = _lightly_head((512, hidden, out))


def build_lightly_byol(tmp_path, *, seed: int = 10, hidden: int = 64, out: int = 32) -> ZooCheckpoint:
    """lightly's BYOL example (ResNet-18 children backbone), ``torch.save(model.state_dict())``."""
    model = _BYOL(hidden, out)
    randomise(model, _generator(seed))
    path = _folder(tmp_path) / "byol.pth"
    torch.save(model.state_dict(), path)
    branches = {"online": _reference(model.backbone, model.projection_head.layers),
                "momentum": _reference(model.backbone_momentum, model.projection_head_momentum.layers)}
    return ZooCheckpoint(path, "lightly", "online", branches, 32, {
        "source": "lightly-ai/lightly examples/pytorch/byol.py", "arch": "resnet18 (torchvision children)",
        "stem": "torchvision: conv1 7x7 stride 2 padding 3, max-pool (also on CIFAR)", "stem_padding": "3",
        "head_activation": "relu",
        "z": "projection_head output: Linear(no bias)-BN-ReLU-Linear(bias)",
        "eval_branch": "online backbone",
    })


class _SimCLR(nn.Module):
    def __init__(self, hidden: int, out: int):
        super().__init__()
        self.backbone = _lightly_backbone()
        self.projection_head = _lightly_head((512, hidden, out), last_bn=True)


def build_lightly_simclr(tmp_path, *, seed: int = 11, hidden: int = 64, out: int = 32) -> ZooCheckpoint:
    """lightly's SimCLR (SimCLRProjectionHead ends in an affine BatchNorm1d), ``model.state_dict()``."""
    model = _SimCLR(hidden, out)
    randomise(model, _generator(seed))
    path = _folder(tmp_path) / "simclr.pth"
    torch.save(model.state_dict(), path)
    return ZooCheckpoint(path, "lightly", "online", {"online": _reference(model.backbone, model.projection_head.layers)},
                         32, {
        "source": "lightly-ai/lightly examples/pytorch/simclr.py, SimCLRProjectionHead",
        "arch": "resnet18 (torchvision children)", "stem": "torchvision: conv1 7x7 stride 2 padding 3, max-pool",
        "stem_padding": "3", "head_activation": "relu",
        "z": "projection_head output: Linear(no bias)-BN-ReLU-Linear(no bias)-BN(affine)",
        "eval_branch": "online backbone",
    })


def build_lightly_tutorial(tmp_path, *, seed: int = 12) -> ZooCheckpoint:
    """lightly's SimCLR tutorial save: ``{"resnet18_parameters": model.backbone.state_dict()}``."""
    backbone = randomise(_lightly_backbone(), _generator(seed))
    path = _folder(tmp_path) / "model.pth"
    torch.save({"resnet18_parameters": backbone.state_dict()}, path)
    return ZooCheckpoint(path, "lightly", "online", {"online": _deepcopy_eval(EncoderReference(backbone))}, 32, {
        "source": "lightly-ai/lightly docs/source/tutorials_source/package/tutorial_simclr_clothing.py",
        "arch": "resnet18 (torchvision children, keys 0.*, 1.*, 4.* .. 7.*)",
        "stem": "torchvision: conv1 7x7 stride 2 padding 3, max-pool", "stem_padding": "3",
        "z": "none (backbone only)", "eval_branch": "online backbone",
    })
