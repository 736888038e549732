"""Vision Transformer encoders: timm's ``VisionTransformer`` with the classifier head removed.

The module and parameter names are timm's (``cls_token``, ``pos_embed``, ``patch_embed.proj``,
``blocks.N.norm1``, ``blocks.N.attn.qkv``, ``blocks.N.attn.proj``, ``blocks.N.ls1.gamma``,
``blocks.N.norm2``, ``blocks.N.mlp.fc1``, ``blocks.N.mlp.fc2``, ``norm`` / ``fc_norm``), which are
also DINO's, MoCo v3's, MAE's and solo-learn's, so their encoder state dicts load unchanged once
any prefix is stripped. ``head`` is ``nn.Identity``: the output is the encoder representation
**H**, the CLS token after the final norm (``pool="token"``) or timm's mean of the patch tokens
(``pool="avg"``, followed by ``fc_norm`` where the weights have one).

The architecture is described by a plain, JSON-safe options dict (stored in checkpoints); see
:data:`DEFAULT_VIT_OPTIONS`. :func:`infer_vit_options` reads those options off a state dict;
the one thing the tensors do not determine, the number of attention heads, comes from the
caller or, failing that, from the standard pairing (64 dimensions per head), and is then
reported as an assumption.

Importing this module imports timm; ``clusterprobe`` imports it lazily.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm
from timm.models.vision_transformer import VisionTransformer

from ..errors import CheckpointError, ClusterprobeError, closest_name

#: Every option of :class:`ViTBackbone`, with the value used when a stored options dict lacks it.
DEFAULT_VIT_OPTIONS: dict[str, Any] = {
    "embed_dim": 768,
    "depth": 12,
    "num_heads": 12,
    "patch_size": 16,  # int, or [height, width]
    "img_size": 224,  # int, or [height, width]: the size the position embedding was trained for
    "in_chans": 3,
    "mlp_ratio": 4.0,
    "qkv_bias": True,
    "qk_norm": False,  # attn.q_norm / attn.k_norm
    "proj_bias": True,  # bias of attn.proj, mlp.fc1, mlp.fc2
    "class_token": True,
    "reg_tokens": 0,  # register tokens (reg_token)
    "layer_scale": None,  # layer-scale init value (ls1.gamma / ls2.gamma present) or None
    "no_embed_class": False,  # pos_embed covers the patch tokens only (DeiT-3, register models)
    "pool": "token",  # "token": CLS token; "avg": mean of the patch tokens
    "fc_norm": False,  # final norm after pooling (fc_norm.*) instead of before (norm.*)
    "pre_norm": False,  # norm_pre.* after the embeddings (CLIP); then patch_embed.proj has no bias
    "final_norm": True,  # a final norm (norm.* or fc_norm.*) at all
    "norm_eps": 1e-6,  # LayerNorm eps: 1e-6 in timm, DINO, MoCo v3, MAE, DeiT; 1e-5 in CLIP
    # how pos_embed is resized for inputs of another size than img_size: "timm" (timm's
    # antialiased bicubic resize) or "dino" (DINO's interpolate_pos_encoding: bicubic by the
    # scale factor (n + 0.1) / N, no antialiasing), which differ by tens of percent
    "pos_resample": "timm",
}

POOLS = ("token", "avg")
POS_RESAMPLES = ("timm", "dino")


def _arch(embed_dim: int, depth: int, num_heads: int, patch_size: int = 16) -> dict[str, Any]:
    return {**DEFAULT_VIT_OPTIONS, "embed_dim": embed_dim, "depth": depth, "num_heads": num_heads,
            "patch_size": patch_size, "mlp_ratio": 4.0}


#: Standard architectures -> complete options (224-pixel input, patch 16 unless named otherwise).
#: Override what differs, e.g. ``{**VIT_ARCHS["vit_tiny"], "img_size": 32, "patch_size": 4}``.
#: MoCo v3's ViT-S uses 12 heads where DINO, DeiT and timm use 6: hence ``mocov3_vit_small``.
VIT_ARCHS: dict[str, dict[str, Any]] = {
    "vit_tiny": _arch(192, 12, 3),
    "vit_small": _arch(384, 12, 6),
    "vit_base": _arch(768, 12, 12),
    "vit_large": _arch(1024, 24, 16),
    "vit_huge": _arch(1280, 32, 16, patch_size=14),
    "mocov3_vit_small": _arch(384, 12, 12),
    "mocov3_vit_base": _arch(768, 12, 12),
}

_SIZE_WORDS = {"t": "tiny", "s": "small", "b": "base", "l": "large", "h": "huge",
               "ti": "tiny"}
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")


# -- options ----------------------------------------------------------------------------------

def _pair(value: Any, name: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise ClusterprobeError(f"ViT option {name} must be an integer or [height, width], got {value!r}.")
    if isinstance(value, int):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        return int(value[0]), int(value[1])
    raise ClusterprobeError(f"ViT option {name} must be an integer or [height, width], got {value!r}.")


def _json_pair(pair: tuple[int, int]) -> int | list[int]:
    return pair[0] if pair[0] == pair[1] else [pair[0], pair[1]]


def normalize_vit_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Complete ``options`` with the defaults and check them; returns a new JSON-safe dict.

    Raises :class:`ClusterprobeError` naming the offending option.
    """
    if not isinstance(options, Mapping):
        raise ClusterprobeError(f"ViT options must be a mapping, got {type(options).__name__}.")
    unknown = [key for key in options if key not in DEFAULT_VIT_OPTIONS]
    if unknown:
        hints = "".join(closest_name(key, tuple(DEFAULT_VIT_OPTIONS)) for key in unknown[:1])
        raise ClusterprobeError(
            f"Unknown ViT option(s) {', '.join(map(repr, unknown))}; the options are "
            f"{', '.join(DEFAULT_VIT_OPTIONS)}.{hints}")
    opts = {**DEFAULT_VIT_OPTIONS, **options}
    for key in ("embed_dim", "depth", "num_heads", "in_chans"):
        value = opts[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ClusterprobeError(f"ViT option {key} must be a positive integer, got {value!r}.")
    reg = opts["reg_tokens"]
    if isinstance(reg, bool) or not isinstance(reg, int) or reg < 0:
        raise ClusterprobeError(f"ViT option reg_tokens must be an integer >= 0, got {reg!r}.")
    if opts["embed_dim"] % opts["num_heads"]:
        raise ClusterprobeError(
            f"ViT num_heads {opts['num_heads']} does not divide embed_dim {opts['embed_dim']}.")
    patch, img = _pair(opts["patch_size"], "patch_size"), _pair(opts["img_size"], "img_size")
    if min(patch) < 1 or min(img) < 1 or img[0] % patch[0] or img[1] % patch[1]:
        raise ClusterprobeError(
            f"ViT img_size {opts['img_size']} must be a positive multiple of "
            f"patch_size {opts['patch_size']}.")
    opts["patch_size"], opts["img_size"] = _json_pair(patch), _json_pair(img)
    try:
        opts["mlp_ratio"] = float(opts["mlp_ratio"])
        opts["norm_eps"] = float(opts["norm_eps"])
        if opts["layer_scale"] is not None:
            opts["layer_scale"] = float(opts["layer_scale"])
    except (TypeError, ValueError) as exc:
        raise ClusterprobeError(
            f"ViT options mlp_ratio, norm_eps and layer_scale must be numbers: {exc}") from None
    if opts["mlp_ratio"] <= 0 or opts["norm_eps"] <= 0:
        raise ClusterprobeError("ViT options mlp_ratio and norm_eps must be positive.")
    for key in ("qkv_bias", "qk_norm", "proj_bias", "class_token", "no_embed_class", "fc_norm",
                "pre_norm", "final_norm"):
        if not isinstance(opts[key], bool):
            raise ClusterprobeError(f"ViT option {key} must be true or false, got {opts[key]!r}.")
    if opts["pool"] not in POOLS:
        raise ClusterprobeError(f"ViT option pool must be one of {', '.join(POOLS)}, got {opts['pool']!r}.")
    if opts["pool"] == "token" and not opts["class_token"]:
        raise ClusterprobeError(
            'ViT pool "token" needs a class token; use pool "avg" for a model without one.')
    if opts["pos_resample"] not in POS_RESAMPLES:
        raise ClusterprobeError(
            f"ViT option pos_resample must be one of {', '.join(POS_RESAMPLES)}, got {opts['pos_resample']!r}.")
    if opts["pos_resample"] == "dino" and (not opts["class_token"] or opts["reg_tokens"] or opts["no_embed_class"]):
        raise ClusterprobeError(
            'ViT pos_resample "dino" is for DINO\'s layout: a class token with a position, no register tokens.')
    if opts["fc_norm"] and not opts["final_norm"]:
        raise ClusterprobeError(
            "ViT option fc_norm needs final_norm (fc_norm is the final norm, moved after pooling).")
    json.dumps(opts)  # stays storable in a checkpoint
    return opts


# -- the backbone -----------------------------------------------------------------------------

class ViTBackbone(VisionTransformer):
    """A timm Vision Transformer returning the encoder representation **H** (``head`` removed).

    Args:
        options: architecture options (see :data:`DEFAULT_VIT_OPTIONS`; missing ones take
            those defaults), e.g. ``VIT_ARCHS["vit_small"]`` or the first result of
            :func:`infer_vit_options`. Kept, completed, as ``self.options``.

    Input: images of shape (batch, in_chans, height, width), height and width multiples of the
    patch size; sizes other than ``img_size`` use timm's bicubic interpolation of the position
    embedding. Output: (batch, out_dim), ``out_dim == embed_dim``. Blocks can be tapped by
    module path (``blocks.7``); their outputs are token tensors (batch, tokens, embed_dim) with
    the class token and register tokens first.
    """

    def __init__(self, options: Mapping[str, Any]):
        opts = normalize_vit_options(options)
        super().__init__(
            img_size=_pair(opts["img_size"], "img_size"),
            patch_size=_pair(opts["patch_size"], "patch_size"),
            in_chans=opts["in_chans"],
            num_classes=0,
            global_pool=opts["pool"],
            embed_dim=opts["embed_dim"],
            depth=opts["depth"],
            num_heads=opts["num_heads"],
            mlp_ratio=opts["mlp_ratio"],
            qkv_bias=opts["qkv_bias"],
            qk_norm=opts["qk_norm"],
            proj_bias=opts["proj_bias"],
            init_values=opts["layer_scale"],
            class_token=opts["class_token"],
            no_embed_class=opts["no_embed_class"],
            reg_tokens=opts["reg_tokens"],
            pre_norm=opts["pre_norm"],
            final_norm=opts["final_norm"],
            fc_norm=opts["fc_norm"],
            dynamic_img_size=True,
            norm_layer=partial(LayerNorm, eps=opts["norm_eps"]),
        )
        self.options = opts
        self.out_dim = opts["embed_dim"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, out_dim)
        if x.ndim != 4:
            raise ClusterprobeError(
                f"ViT input must have shape (batch, channels, height, width), got {tuple(x.shape)}.")
        ph, pw = self.patch_embed.patch_size
        if x.shape[-2] % ph or x.shape[-1] % pw:
            raise ClusterprobeError(
                f"ViT input size {tuple(x.shape[-2:])} is not a multiple of the patch size {(ph, pw)}; "
                "resize or crop the images to a multiple of it.")
        return super().forward(x)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, rows, cols, C) patch tokens
        rows, cols = int(x.shape[1]), int(x.shape[2])
        grid = tuple(self.patch_embed.grid_size)
        if self.options["pos_resample"] != "dino" or (rows, cols) == grid:
            return super()._pos_embed(x)
        # DINO's interpolate_pos_encoding (vision_transformer.py), for the same tokens
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        patch_pos = F.interpolate(
            patch_pos.reshape(1, grid[0], grid[1], -1).permute(0, 3, 1, 2),
            scale_factor=((rows + 0.1) / grid[0], (cols + 0.1) / grid[1]), mode="bicubic")
        pos = torch.cat([cls_pos, patch_pos.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)], dim=1)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x.reshape(x.shape[0], rows * cols, -1)], dim=1)
        return self.pos_drop(tokens + pos)


# -- reading options off a state dict ---------------------------------------------------------

def _top_level(keys) -> str:
    names = sorted({key.split(".")[0] for key in keys})
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return shown or "(none)"


def is_vit_state_dict(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether an un-prefixed state dict has the key layout of a timm/DINO-style ViT.

    True for ``pos_embed`` + ``patch_embed.*`` + ``blocks.N.attn.*``: variants of that layout
    which :func:`infer_vit_options` cannot build are then refused there with a precise reason.
    """
    keys = list(state)
    return ("pos_embed" in state
            and any(key.startswith("patch_embed.") for key in keys)
            and any(_BLOCK_KEY.match(key) and ".attn." in key for key in keys))


def _tensor(state: Mapping[str, Any], key: str, ndim: int | None = None) -> torch.Tensor:
    value = state[key]
    if not isinstance(value, torch.Tensor) or (ndim is not None and value.ndim != ndim):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise CheckpointError(
            f"ViT state dict: {key} should be a {ndim}-dimensional tensor, found {shape}.")
    return value


def _square_side(n: int) -> int | None:
    if n < 1:
        return None
    side = math.isqrt(n)
    return side if side * side == n else None


def _resolve_arch(arch: str) -> tuple[str, dict[str, Any]]:
    name = arch.strip().lower().replace("-", "_")
    name = name.split("/")[-1]  # "timm/vit_small_patch16_224"
    if name in VIT_ARCHS:
        return name, VIT_ARCHS[name]
    moco = "moco" in name
    size = None
    family = "vit" in name or "deit" in name  # not swin_tiny, convnext_small, ...
    match = re.search(r"(tiny|small|base|large|huge)", name) if family else None
    if match:
        size = match.group(1)
    elif family:  # dino_vits16, vitb8, vit_s16, deit_ti
        match = re.search(r"(?:vit|deit3?)_?(ti|t|s|b|l|h)(?:\d+)?(?:_|$)", name)
        if match:
            size = _SIZE_WORDS[match.group(1)]
    key = f"{'mocov3_' if moco else ''}vit_{size}"
    if size is None or key not in VIT_ARCHS:
        known = ", ".join(VIT_ARCHS)
        raise CheckpointError(
            f"Unknown ViT architecture {arch!r}: the known ones are {known} (names such as "
            f"vit_small_patch16_224, deit_small or dino_vits16 are read as these)."
            f"{closest_name(name, tuple(VIT_ARCHS))}")
    return key, VIT_ARCHS[key]


def infer_vit_options(
    state: Mapping[str, torch.Tensor],
    *,
    arch: str | None = None,
    num_heads: int | None = None,
    pool: str | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Read :class:`ViTBackbone` options off an un-prefixed ViT state dict.

    Args:
        state: keys ``cls_token``, ``pos_embed``, ``patch_embed.proj.weight``, ``blocks.N...``,
            ``norm.*`` / ``fc_norm.*`` (timm's and DINO's names, no prefix). A classifier or
            projector ``head.*`` is ignored (it is not part of the backbone; leave it out when
            loading the backbone).
        arch: a name of :data:`VIT_ARCHS`, or one read as such (``vit_small_patch16_224``,
            ``deit_small``, ``dino_vits16``, ``mocov3_vit_small``); it must agree with the
            tensors' width and depth. Only used for the number of heads.
        num_heads: the number of attention heads; takes precedence over ``arch``.
        pool: ``"token"`` or ``"avg"``; by default ``"token"`` for a model with a class token
            and no ``fc_norm``, else ``"avg"``.

    Returns:
        ``(options, assumptions)``: the options (JSON-safe), and one sentence per choice the
        tensors did not determine (empty when everything was given or determined).

    Raises:
        CheckpointError: the state dict is not a ViT of this family (the message names the
            keys), or ``arch`` / ``num_heads`` contradict the weights.
    """
    keys = [key for key in state if not key.startswith("head.")]
    required = ("pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight",
                "blocks.0.mlp.fc1.weight")
    missing = [key for key in required if key not in state]
    if missing:
        hint = ""
        if "patch_embed.proj.0.weight" in state:
            hint = (" The patch embedding is a convolutional stem (MoCo v3 vit_conv_*), "
                    "which is not supported.")
        elif "blocks.0.attn.q_bias" in state or "blocks.0.attn.relative_position_bias_table" in state:
            hint = (" This looks like a BEiT-style ViT (separate q/v biases, relative positions), "
                    "which is not supported.")
        raise CheckpointError(
            f"Not a timm/DINO-style Vision Transformer state dict: missing {', '.join(missing)}. "
            f"Top-level keys found: {_top_level(keys)}.{hint}")
    proj = _tensor(state, "patch_embed.proj.weight", 4)
    embed_dim, in_chans = int(proj.shape[0]), int(proj.shape[1])
    patch = (int(proj.shape[2]), int(proj.shape[3]))
    depth_ids = sorted({int(m.group(1)) for key in keys if (m := _BLOCK_KEY.match(key))})
    if depth_ids != list(range(len(depth_ids))):
        raise CheckpointError(
            f"ViT state dict: the blocks are numbered {depth_ids[:8]}{'...' if len(depth_ids) > 8 else ''}, "
            "not 0, 1, 2, ... without gaps.")
    depth = len(depth_ids)

    class_token = "cls_token" in state
    reg_tokens = int(_tensor(state, "reg_token", 3).shape[1]) if "reg_token" in state else 0
    prefix = int(class_token) + reg_tokens
    pos = _tensor(state, "pos_embed", 3)
    n_pos = int(pos.shape[1])
    assumptions: list[str] = []
    with_prefix = _square_side(n_pos - prefix) if prefix else None
    without_prefix = _square_side(n_pos)
    if prefix and with_prefix and without_prefix:
        # Both readings fit a square grid (only for tiny grids): take the usual one, and say so.
        no_embed_class = reg_tokens > 0
        side = without_prefix if no_embed_class else with_prefix
        assumptions.append(
            f"pos_embed's {n_pos} tokens fit both a {with_prefix}x{with_prefix} grid plus {prefix} prefix "
            f"token(s) and a {without_prefix}x{without_prefix} grid without them; assumed "
            f"{'the latter (no_embed_class)' if no_embed_class else 'the former'}; set the option "
            "no_embed_class if the model used the other.")
    elif prefix and with_prefix:
        no_embed_class, side = False, with_prefix
    elif without_prefix:
        no_embed_class, side = bool(prefix), without_prefix
    else:
        raise CheckpointError(
            f"ViT state dict: pos_embed has {n_pos} tokens, which with {prefix} class/register token(s) is "
            "not a square grid of patches; non-square position embeddings are not supported.")
    img_size = (side * patch[0], side * patch[1])

    hidden = int(_tensor(state, "blocks.0.mlp.fc1.weight", 2).shape[0])
    mlp_ratio = hidden / embed_dim
    if int(embed_dim * mlp_ratio) != hidden:  # timm's int(dim * ratio) must give the hidden width back
        mlp_ratio = math.nextafter(mlp_ratio, math.inf)

    fc_norm = "fc_norm.weight" in state
    final_norm = fc_norm or "norm.weight" in state
    if pool is None:
        pool = "token" if class_token and not fc_norm else "avg"
    elif pool not in POOLS:
        raise ClusterprobeError(f"ViT pool must be one of {', '.join(POOLS)}, got {pool!r}.")

    heads = _infer_heads(embed_dim, depth, patch, arch, num_heads, assumptions)

    pre_norm = "norm_pre.weight" in state
    options = {
        **DEFAULT_VIT_OPTIONS,
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": heads,
        "patch_size": _json_pair(patch),
        "img_size": _json_pair(img_size),
        "in_chans": in_chans,
        "mlp_ratio": mlp_ratio,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "qk_norm": "blocks.0.attn.q_norm.weight" in state,
        "proj_bias": "blocks.0.attn.proj.bias" in state,
        "class_token": class_token,
        "reg_tokens": reg_tokens,
        # the init value does not matter once the weights are loaded
        "layer_scale": 1e-5 if "blocks.0.ls1.gamma" in state else None,
        "no_embed_class": no_embed_class,
        "pool": pool,
        "fc_norm": fc_norm,
        "pre_norm": pre_norm,
        "final_norm": final_norm,
    }
    if pre_norm:
        assumptions.append(
            "assumed LayerNorm eps 1e-6 and exact GELU (timm's ViT defaults); this ViT has a pre-norm "
            "(norm_pre), as CLIP models do, which use eps 1e-5 (and OpenAI's quick GELU): set the option "
            "norm_eps if the model used another value.")
    _check_layout(state, keys, options)
    return options, assumptions


def _infer_heads(embed_dim: int, depth: int, patch: tuple[int, int], arch: str | None,
                 num_heads: int | None, assumptions: list[str]) -> int:
    if num_heads is not None:
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
            raise CheckpointError(f"num_heads must be a positive integer, got {num_heads!r}.")
        if embed_dim % num_heads:
            divisors = [d for d in range(1, embed_dim + 1) if embed_dim % d == 0 and embed_dim // d >= 8]
            raise CheckpointError(
                f"num_heads={num_heads} does not divide the ViT's embed_dim {embed_dim} (from "
                f"patch_embed.proj.weight); numbers of heads that do: {', '.join(map(str, divisors[:12]))}.")
        return num_heads
    if arch is not None:
        name, spec = _resolve_arch(arch)
        if spec["embed_dim"] != embed_dim or spec["depth"] != depth:
            raise CheckpointError(
                f"The architecture {arch!r} ({name}: embed_dim {spec['embed_dim']}, depth {spec['depth']}) "
                f"does not match the weights (embed_dim {embed_dim}, depth {depth}); pass the right "
                "architecture, or the number of heads with num_heads= (--vit-heads).")
        named_patch = re.search(r"patch(\d+)", arch.lower())
        if named_patch and int(named_patch.group(1)) != patch[0]:
            raise CheckpointError(
                f"The architecture {arch!r} names patch size {named_patch.group(1)}, but the weights' patch "
                f"embedding has patch size {_json_pair(patch)}.")
        return int(spec["num_heads"])
    if embed_dim % 64:
        raise CheckpointError(
            f"The number of attention heads of this ViT (embed_dim {embed_dim}) is not stored in its weights "
            "and embed_dim is not a multiple of 64 (the standard 64 dimensions per head); pass vit_heads= "
            "(--vit-heads) to load_checkpoint.")
    heads = embed_dim // 64
    note = "; MoCo v3's ViT-S uses 12: name the architecture mocov3_vit_small" if embed_dim == 384 else ""
    assumptions.append(
        f"assumed {heads} attention heads (embed_dim {embed_dim} / 64, the standard pairing{note}); "
        "pass vit_heads= (--vit-heads) if the model used another number")
    return heads


def _state_dict_shapes(options: dict[str, Any]) -> dict[str, torch.Size]:
    """Keys and shapes of the backbone the options build, built on the meta device (no memory).

    timm releases before ~1.0.20 call ``.item()`` while building, which the meta device cannot
    answer; those build on the CPU instead.
    """
    try:
        with torch.device("meta"):
            model = ViTBackbone(options)
    except (RuntimeError, NotImplementedError):
        model = ViTBackbone(options)
    return {key: value.shape for key, value in model.state_dict().items()}


def _check_layout(state: Mapping[str, Any], keys: list[str], options: dict[str, Any]) -> None:
    """Compare the state dict's keys and shapes with those of the backbone the options build."""
    expected = _state_dict_shapes(options)
    unexpected = [key for key in keys if key not in expected]
    missing = [key for key in expected if key not in state]
    wrong = [f"{key} {tuple(getattr(state[key], 'shape', ()))} (expected {tuple(value)})"
             for key, value in expected.items()
             if key in state and (not isinstance(state[key], torch.Tensor) or state[key].shape != value)]
    if not (unexpected or missing or wrong):
        return
    parts = []
    if unexpected:
        more = " ..." if len(unexpected) > 8 else ""
        parts.append(f"keys this ViT does not have: {', '.join(unexpected[:8])}{more}")
    if missing:
        parts.append(f"missing keys: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if wrong:
        parts.append(f"shapes that differ: {'; '.join(wrong[:4])}{' ...' if len(wrong) > 4 else ''}")
    hint = ""
    if "dist_token" in state:
        hint = " A distillation token (DeiT distilled) is not supported."
    elif "register_tokens" in state:
        hint = (" register_tokens / mask_token are DINOv2's original names; convert the state dict "
                "with timm's checkpoint filter for DINOv2 first.")
    elif any(key.startswith("decoder_") for key in state):
        hint = (" This is an MAE pre-training checkpoint: the encoder is everything but decoder_* "
                "and mask_token; leave those out.")
    elif "mask_token" in state or "masked_embed" in state:
        hint = (" mask_token / masked_embed are masked pre-training parameters (MAE, iBOT, DINOv2) that "
                "the encoder's forward does not use; leave them out.")
    elif any(key.startswith("attn_pool.") for key in state):
        hint = " Attention pooling (attn_pool, global_pool 'map') is not supported."
    raise CheckpointError(
        "The state dict looks like a Vision Transformer, but not of the supported timm/DINO layout: "
        + "; ".join(parts) + "." + hint)
