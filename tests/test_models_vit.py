"""ViT backbone (clusterprobe.models.vit): timm's VisionTransformer without its head.

Checked against timm's own forward (exact), against an independent plain-PyTorch forward in
the style of DINO's vision_transformer.py with DINO's key names (to 1e-5), and for what
infer_vit_options reads off a state dict, assumes, or refuses.
"""

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

timm = pytest.importorskip("timm")
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

from clusterprobe.errors import CheckpointError, ClusterprobeError  # noqa: E402
from clusterprobe.models.vit import (  # noqa: E402
    DEFAULT_VIT_OPTIONS,
    VIT_ARCHS,
    ViTBackbone,
    infer_vit_options,
    is_vit_state_dict,
)

SMALL = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randomize(module: torch.nn.Module, scale: float = 0.3) -> torch.nn.Module:
    """Move every parameter away from its initial value (LayerNorm 1/0, cls token ~0, ...)."""
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn_like(param) * scale)
    return module.eval()


def without_head(state):
    return {key: value for key, value in state.items() if not key.startswith("head.")}


def saved_and_loaded(state, tmp_path):
    path = tmp_path / "vit.pth"
    torch.save(state, path)
    return torch.load(path, map_location="cpu", weights_only=True)


def backbone_from(state, **kwargs) -> tuple[ViTBackbone, dict, list[str]]:
    options, assumptions = infer_vit_options(state, **kwargs)
    model = ViTBackbone(options)
    model.load_state_dict(without_head(state), strict=True)
    return model.eval(), options, assumptions


def timm_features(model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.forward_features(x), pre_logits=True)


# -- (1) a timm ViT loads exactly ---------------------------------------------------------

def test_timm_vit_loads_strictly_and_matches_timm_forward_exactly(tmp_path):
    reference = randomize(VisionTransformer(**SMALL, num_classes=10))  # with a classifier head
    state = saved_and_loaded(reference.state_dict(), tmp_path)
    assert any(key.startswith("head.") for key in state)
    model, options, assumptions = backbone_from(state, num_heads=3)

    assert assumptions == []
    assert options["embed_dim"] == 48 and options["depth"] == 2 and options["num_heads"] == 3
    assert options["patch_size"] == 8 and options["img_size"] == 32 and options["in_chans"] == 3
    assert options["mlp_ratio"] == 4.0 and options["qkv_bias"] and options["pool"] == "token"
    assert model.out_dim == 48 and set(model.state_dict()) == set(without_head(state))
    assert not any(key.startswith("head") for key in model.state_dict())

    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        h = model(x)
        tokens = reference.forward_features(x)
        assert h.shape == (5, 48)
        assert torch.equal(h, tokens[:, 0])  # the CLS token after the final norm
        assert torch.equal(h, timm_features(reference, x))


def test_options_are_json_safe_and_rebuild_the_same_model():
    reference = randomize(VisionTransformer(**SMALL, num_classes=0, reg_tokens=2, no_embed_class=True,
                                            init_values=1e-4))
    model, options, _ = backbone_from(reference.state_dict(), num_heads=3)
    stored = json.loads(json.dumps(options))
    rebuilt = ViTBackbone(stored).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert rebuilt.options == model.options == stored
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def on_meta_device(build):
    try:
        with torch.device("meta"):
            return build()
    except RuntimeError:  # timm releases before ~1.0.20 call .item() while building
        return build()


def test_vit_archs_build_timms_standard_models():
    expected = {"vit_tiny": (192, 3, 12), "vit_small": (384, 6, 12), "vit_base": (768, 12, 12),
                "vit_large": (1024, 16, 24)}
    for name, (dim, heads, depth) in expected.items():
        spec = VIT_ARCHS[name]
        assert (spec["embed_dim"], spec["num_heads"], spec["depth"], spec["mlp_ratio"]) == (dim, heads, depth, 4.0)
        ours = on_meta_device(lambda: ViTBackbone(spec))
        theirs = on_meta_device(lambda: timm.create_model(f"{name}_patch16_224", pretrained=False, num_classes=0))
        assert {k: v.shape for k, v in ours.state_dict().items()} == \
            {k: v.shape for k, v in theirs.state_dict().items()}
        assert ours.blocks[0].attn.num_heads == theirs.blocks[0].attn.num_heads == heads
        assert ours.out_dim == dim


# -- (2) an independent forward with DINO's key names -------------------------------------

def dino_state_dict(dim=48, depth=2, patch=8, grid=4, hidden=192, in_chans=3) -> dict[str, torch.Tensor]:
    """Random weights under the key names and shapes of DINO's vision_transformer.py (head = Identity)."""
    def r(*shape, mean=0.0, std=0.3):
        return mean + std * torch.randn(*shape)

    state = {
        "cls_token": r(1, 1, dim),
        "pos_embed": r(1, grid * grid + 1, dim),
        "patch_embed.proj.weight": r(dim, in_chans, patch, patch, std=0.1),
        "patch_embed.proj.bias": r(dim),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        state.update({
            b + "norm1.weight": r(dim, mean=1.0), b + "norm1.bias": r(dim),
            b + "attn.qkv.weight": r(3 * dim, dim, std=0.15), b + "attn.qkv.bias": r(3 * dim),
            b + "attn.proj.weight": r(dim, dim, std=0.15), b + "attn.proj.bias": r(dim),
            b + "norm2.weight": r(dim, mean=1.0), b + "norm2.bias": r(dim),
            b + "mlp.fc1.weight": r(hidden, dim, std=0.15), b + "mlp.fc1.bias": r(hidden),
            b + "mlp.fc2.weight": r(dim, hidden, std=0.1), b + "mlp.fc2.bias": r(dim),
        })
    state["norm.weight"], state["norm.bias"] = r(dim, mean=1.0), r(dim)
    return state


def reference_vit_forward(state, x, num_heads, eps=1e-6):
    """A pre-norm ViT written out in plain PyTorch: the CLS token after the final LayerNorm."""
    def ln(t, name):
        return F.layer_norm(t, t.shape[-1:], state[name + ".weight"], state[name + ".bias"], eps)

    def linear(t, name):
        return t @ state[name + ".weight"].T + state[name + ".bias"]

    w = state["patch_embed.proj.weight"]
    tokens = F.conv2d(x, w, state["patch_embed.proj.bias"], stride=w.shape[-1])  # (B, D, h, w)
    tokens = tokens.flatten(2).transpose(1, 2)
    batch, dim = tokens.shape[0], tokens.shape[-1]
    tokens = torch.cat([state["cls_token"].expand(batch, -1, -1), tokens], dim=1) + state["pos_embed"]
    depth = 1 + max(int(key.split(".")[1]) for key in state if key.startswith("blocks."))
    head_dim = dim // num_heads
    for i in range(depth):
        b = f"blocks.{i}."
        n = tokens.shape[1]
        qkv = linear(ln(tokens, b + "norm1"), b + "attn.qkv").reshape(batch, n, 3, num_heads, head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, N, head_dim)
        attention = torch.softmax((q @ k.transpose(-2, -1)) * head_dim ** -0.5, dim=-1)
        mixed = (attention @ v).transpose(1, 2).reshape(batch, n, dim)
        tokens = tokens + linear(mixed, b + "attn.proj")
        hidden = F.gelu(linear(ln(tokens, b + "norm2"), b + "mlp.fc1"))
        tokens = tokens + linear(hidden, b + "mlp.fc2")
    return ln(tokens, "norm")[:, 0]


def test_dino_keys_match_an_independent_forward(tmp_path):
    state = saved_and_loaded(dino_state_dict(), tmp_path)
    assert is_vit_state_dict(state)
    model, options, assumptions = backbone_from(state, num_heads=3)
    assert assumptions == []
    assert (options["embed_dim"], options["depth"], options["patch_size"], options["img_size"]) == (48, 2, 8, 32)
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        ours = model(x)
        reference = reference_vit_forward(state, x, num_heads=3)
        other_heads = reference_vit_forward(state, x, num_heads=6)
    assert ours.shape == reference.shape == (6, 48)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    # the comparison is sensitive to the number of heads, which the weights do not store
    assert (ours - other_heads).abs().max() > 1e-3


# -- (3) the number of heads ----------------------------------------------------------------

def test_heads_from_arch_names():
    state = dino_state_dict(dim=192, depth=12, patch=16, grid=2, hidden=768)
    for arch in ("vit_tiny", "vit_tiny_patch16_224", "deit_tiny", "deit_tiny_patch16_224", "dino_vitt16",
                 "timm/vit_tiny_patch16_224.augreg_in21k"):
        options, assumptions = infer_vit_options(state, arch=arch)
        assert options["num_heads"] == 3, arch
        assert assumptions == [], arch
    with pytest.raises(CheckpointError, match="does not match the weights"):
        infer_vit_options(state, arch="vit_small")
    with pytest.raises(CheckpointError, match="patch size 8"):
        infer_vit_options(state, arch="vit_tiny_patch8_224")
    with pytest.raises(CheckpointError, match="Unknown ViT architecture"):
        infer_vit_options(state, arch="swin_tiny_window7")
    small = dino_state_dict(dim=384, depth=12, patch=16, grid=2, hidden=1536)
    assert infer_vit_options(small, arch="dino_vits16")[0]["num_heads"] == 6
    assert infer_vit_options(small, arch="mocov3_vit_small")[0]["num_heads"] == 12  # MoCo v3's ViT-S


def test_heads_given_take_precedence_and_must_divide_embed_dim():
    state = dino_state_dict()
    options, assumptions = infer_vit_options(state, num_heads=4)
    assert options["num_heads"] == 4 and assumptions == []
    with pytest.raises(CheckpointError, match=r"num_heads=5 does not divide the ViT's embed_dim 48"):
        infer_vit_options(state, num_heads=5)
    # num_heads wins over an arch that would disagree with it
    tiny = dino_state_dict(dim=192, depth=12, patch=16, grid=2, hidden=768)
    assert infer_vit_options(tiny, arch="vit_tiny", num_heads=6)[0]["num_heads"] == 6


def test_heads_assumed_from_the_standard_pairing_are_reported():
    state = dino_state_dict(dim=128, hidden=512)
    options, assumptions = infer_vit_options(state)
    assert options["num_heads"] == 2
    assert len(assumptions) == 1
    assert "assumed 2 attention heads (embed_dim 128 / 64, the standard pairing)" in assumptions[0]
    assert "vit_heads= (--vit-heads)" in assumptions[0]
    # 48 is not a multiple of 64: no standard pairing to fall back on
    with pytest.raises(CheckpointError, match=r"vit_heads= \(--vit-heads\)"):
        infer_vit_options(dino_state_dict())


# -- refusals ---------------------------------------------------------------------------------

def test_not_a_vit_is_refused_naming_the_keys():
    resnet = {"conv1.weight": torch.zeros(8, 3, 3, 3), "bn1.weight": torch.zeros(8),
              "layer1.0.conv1.weight": torch.zeros(8, 8, 3, 3), "fc.weight": torch.zeros(10, 8)}
    assert not is_vit_state_dict(resnet)
    with pytest.raises(CheckpointError, match=r"missing pos_embed.*Top-level keys found: bn1, conv1, fc, layer1"):
        infer_vit_options(resnet, num_heads=1)


@pytest.mark.parametrize("extra, message", [
    ({"dist_token": torch.zeros(1, 1, 48)}, "dist_token"),
    ({"mask_token": torch.zeros(1, 48)}, "mask_token.*leave them out"),
    ({"mask_token": torch.zeros(1, 1, 48), "decoder_embed.weight": torch.zeros(32, 48)}, "MAE pre-training"),
    ({"blocks.0.attn.extra.weight": torch.zeros(48)}, "blocks.0.attn.extra.weight"),
])
def test_unknown_keys_are_refused_by_name(extra, message):
    state = {**dino_state_dict(), **extra}
    assert is_vit_state_dict(state)
    with pytest.raises(CheckpointError, match=message):
        infer_vit_options(state, num_heads=3)


def test_missing_and_misshapen_keys_are_refused_by_name():
    state = dino_state_dict()
    del state["blocks.1.norm2.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.1\.norm2\.bias"):
        infer_vit_options(state, num_heads=3)
    state = dino_state_dict()
    state["blocks.1.mlp.fc1.weight"] = torch.zeros(100, 48)
    with pytest.raises(CheckpointError, match=r"blocks\.1\.mlp\.fc1\.weight \(100, 48\)"):
        infer_vit_options(state, num_heads=3)
    state = dino_state_dict()
    state["pos_embed"] = torch.zeros(1, 12, 48)  # 11 patches + CLS: no square grid
    with pytest.raises(CheckpointError, match="pos_embed has 12 tokens"):
        infer_vit_options(state, num_heads=3)


def test_bad_options_are_refused():
    with pytest.raises(ClusterprobeError, match="Did you mean 'num_heads'"):
        ViTBackbone({**SMALL, "num_head": 3})
    with pytest.raises(ClusterprobeError, match="does not divide"):
        ViTBackbone({**SMALL, "num_heads": 5})
    with pytest.raises(ClusterprobeError, match="needs a class token"):
        ViTBackbone({**SMALL, "class_token": False, "pool": "token"})


# -- (4) variants built with timm load exactly ------------------------------------------------

VARIANTS = {
    "registers, no_embed_class": dict(reg_tokens=2, no_embed_class=True),
    "register, pos_embed over prefix": dict(reg_tokens=1),
    "layer scale": dict(init_values=1e-5),
    "avg pool + fc_norm (MAE)": dict(global_pool="avg"),
    "avg pool, norm before pooling": dict(global_pool="avg", fc_norm=False),
    "no class token": dict(class_token=False, global_pool="avg"),
    "no qkv bias, mlp ratio 2": dict(qkv_bias=False, mlp_ratio=2.0),
    "qk norm": dict(qk_norm=True),
    "pre-norm (CLIP-like)": dict(pre_norm=True),
    "no_embed_class, class token (DeiT-3)": dict(no_embed_class=True, init_values=1e-6),
}
EXPECTED = {
    "registers, no_embed_class": dict(reg_tokens=2, no_embed_class=True, pool="token"),
    "register, pos_embed over prefix": dict(reg_tokens=1, no_embed_class=False),
    "layer scale": dict(layer_scale=1e-5),
    "avg pool + fc_norm (MAE)": dict(pool="avg", fc_norm=True),
    "avg pool, norm before pooling": dict(pool="avg", fc_norm=False, final_norm=True),
    "no class token": dict(class_token=False, pool="avg"),
    "no qkv bias, mlp ratio 2": dict(qkv_bias=False, mlp_ratio=2.0),
    "qk norm": dict(qk_norm=True),
    "pre-norm (CLIP-like)": dict(pre_norm=True),
    "no_embed_class, class token (DeiT-3)": dict(no_embed_class=True, class_token=True),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_timm_variants_load_exactly(variant, tmp_path):
    reference = randomize(VisionTransformer(**SMALL, num_classes=7, **VARIANTS[variant]))
    state = saved_and_loaded(reference.state_dict(), tmp_path)
    pool = "avg" if variant == "avg pool, norm before pooling" else None  # weights alone say "token"
    model, options, assumptions = backbone_from(state, num_heads=3, pool=pool)
    for key, value in EXPECTED[variant].items():
        assert options[key] == value, (key, options[key])
    if variant != "pre-norm (CLIP-like)":
        assert assumptions == []
    else:
        assert len(assumptions) == 1 and "norm_eps" in assumptions[0]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), timm_features(reference, x))


def test_pool_option_overrides_the_default():
    reference = randomize(VisionTransformer(**SMALL, num_classes=0))
    model, options, _ = backbone_from(reference.state_dict(), num_heads=3, pool="avg")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = reference.forward_features(x)
        torch.testing.assert_close(model(x), tokens[:, 1:].mean(dim=1), atol=1e-6, rtol=0)
    with pytest.raises(ClusterprobeError, match="pool"):
        infer_vit_options(reference.state_dict(), num_heads=3, pool="max")


# -- (5) other input sizes ------------------------------------------------------------------

@pytest.mark.parametrize("size", [(48, 48), (24, 40), (64, 32)])
def test_other_input_sizes_interpolate_the_position_embedding(size):
    reference = randomize(VisionTransformer(**SMALL, num_classes=0, dynamic_img_size=True))
    model, _, _ = backbone_from(reference.state_dict(), num_heads=3)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        h = model(x)
        assert h.shape == (2, 48) and torch.isfinite(h).all()
        assert torch.equal(h, timm_features(reference, x))
        # the position embedding really was resampled: not the same as cropping to 32x32
        assert not torch.allclose(h, model(x[..., :32, :32]))


def test_input_not_a_multiple_of_the_patch_size_is_refused_clearly():
    model = ViTBackbone(SMALL).eval()
    with pytest.raises(ClusterprobeError, match=r"not a multiple of the patch size \(8, 8\)"):
        model(torch.randn(1, 3, 30, 32))


def test_defaults_cover_every_option_and_importing_clusterprobe_does_not_import_timm():
    assert set(VIT_ARCHS["vit_small"]) == set(DEFAULT_VIT_OPTIONS)
    assert math.isclose(VIT_ARCHS["vit_base"]["mlp_ratio"], 4.0)
    code = "import sys, clusterprobe; print('timm' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr[-2000:]


def test_block_taps_reduce_the_tokens_that_h_is_made_of():
    from clusterprobe.extract import LayerCapture
    from clusterprobe.models import ModelConfig, SSLModel

    x = torch.randn(2, 3, 32, 32)
    # a class token: a block is tapped at its class token (timm's own tokens, class token first)
    model = SSLModel(ModelConfig(backbone="vit", vit={**SMALL})).eval()
    randomize(model.backbone)
    spec = model.resolve_layer("backbone.blocks.1")
    with torch.no_grad(), LayerCapture(model, [spec]) as capture:
        tapped = capture.run(x)[spec.name]
        tokens = model.backbone.blocks(model.backbone._pos_embed(model.backbone.patch_embed(x)))
    torch.testing.assert_close(tapped, tokens[:, 0])
    # no class token but register tokens: a block is reduced as H is, to the mean of its patch
    # tokens (past the two register tokens), not the mean of every token
    options = {**SMALL, "class_token": False, "reg_tokens": 2, "no_embed_class": True, "pool": "avg"}
    model = SSLModel(ModelConfig(backbone="vit", vit=options)).eval()
    randomize(model.backbone)
    last = f"backbone.blocks.{len(model.backbone.blocks) - 1}"
    with torch.no_grad():
        tokens = model.backbone.blocks(model.backbone._pos_embed(model.backbone.patch_embed(x)))
        torch.testing.assert_close(model.encode(x), model.backbone.norm(tokens)[:, 2:].mean(dim=1))
        spec = model.resolve_layer(last)
        with LayerCapture(model, [spec]) as capture:
            tapped = capture.run(x)[spec.name]
    torch.testing.assert_close(tapped, tokens[:, 2:].mean(dim=1))
    assert not torch.allclose(tapped, tokens.mean(dim=1), atol=1e-3)
    assert spec.to_dict()["skip_tokens"] == 2
    # a class token and pool "avg" (H = patch-token mean, e.g. MAE fine-tuned): blocks follow H's
    # pooling, past the class token, not the class token H never reads
    options = {**SMALL, "pool": "avg"}
    model = SSLModel(ModelConfig(backbone="vit", vit=options)).eval()
    randomize(model.backbone)
    spec = model.resolve_layer("backbone.blocks.1")
    with torch.no_grad(), LayerCapture(model, [spec]) as capture:
        tapped = capture.run(x)[spec.name]
        tokens = model.backbone.blocks[:2](model.backbone._pos_embed(model.backbone.patch_embed(x)))
    torch.testing.assert_close(tapped, tokens[:, 1:].mean(dim=1))
    # the class-token layout keeps the spec (and the bank fingerprints) it had
    cls_spec = SSLModel(ModelConfig(backbone="vit", vit={**SMALL})).resolve_layer("backbone.blocks.1")
    assert cls_spec.to_dict() == {"name": "backbone.blocks.1", "module": "backbone.blocks.1", "pool": True,
                                  "pre_activation": False, "tokens": "cls"}


def test_an_unknown_layer_of_a_one_block_vit_is_a_layer_error():
    from clusterprobe.errors import LayerError
    from clusterprobe.models import ModelConfig, SSLModel

    model = SSLModel(ModelConfig(backbone="vit", vit={**SMALL, "depth": 1}))
    with pytest.raises(LayerError, match="such as backbone.blocks.0"):  # was an IndexError
        model.resolve_layer("backbone.blockz.0")
