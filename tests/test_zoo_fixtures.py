"""The checkpoint zoo itself (tests/zoo.py): files laid out as each official code base writes them,
and reference forwards that agree with independent implementations (torchvision, timm)."""

from __future__ import annotations

import argparse
import pickle
import sys
import types

import pytest
import torch
import torchvision

import zoo

BUILDERS = sorted(name for name in dir(zoo) if name.startswith("build_"))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo_fixtures")
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = getattr(zoo, name)(folder / name)
        return cache[name]

    return get


def images(case, n=3, seed=0):
    return torch.randn(n, 3, case.image_size, case.image_size, generator=torch.Generator().manual_seed(seed))


def load(case, **kwargs):
    return torch.load(case.path, map_location="cpu", weights_only=kwargs.pop("weights_only", True), **kwargs)


# What each official training script puts at the top of its file.
TOP_LEVEL = {
    "build_resa_cifar": {"epoch", "state_dict", "optimizer"},
    "build_resa_imagenet": {"epoch", "state_dict", "optimizer"},
    "build_mocov3": {"epoch", "arch", "state_dict", "optimizer", "scaler"},
    "build_mocov3_vit": {"epoch", "arch", "state_dict", "optimizer", "scaler"},
    "build_swav": {"epoch", "state_dict", "optimizer", "amp"},
    "build_dino": {"student", "teacher", "optimizer", "epoch", "args", "dino_loss", "fp16_scaler"},
    "build_dino_bnhead": {"student", "teacher", "optimizer", "epoch", "args", "dino_loss", "fp16_scaler"},
    "build_vicreg": {"epoch", "model", "optimizer"},
    "build_barlowtwins": {"epoch", "model", "optimizer"},
    "build_lightly_tutorial": {"resnet18_parameters"},
}

# (where the weights are, keys that must be there with their shape or None, keys that must not)
S = "state_dict"
KEYS = {
    "build_resa_cifar": [(S, {
        "module.encoder.conv1.weight": (64, 3, 3, 3), "module.momentum_encoder.conv1.weight": (64, 3, 3, 3),
        "module.encoder.layer4.1.bn2.running_var": (512,), "module.projector.0.weight": (64, 512),
        "module.projector.4.weight": (64,), "module.projector.6.weight": (32, 64),
        "module.projector.7.running_var": (32,), "module.momentum_projector.7.running_mean": (32,),
    }, ["module.projector.7.weight", "module.projector.7.bias", "module.predictor.0.weight",
        "module.encoder.fc.weight", "module.encoder.padding"])],
    "build_resa_imagenet": [(S, {
        "module.encoder.conv1.weight": (64, 3, 7, 7), "module.momentum_encoder.layer2.0.downsample.1.running_mean": (128,),
        "module.predictor.0.weight": (64, 32), "module.predictor.1.running_var": (64,),
        "module.predictor.3.weight": (32, 64), "module.momentum_projector.6.bias": (32,),
    }, ["module.projector.7.weight", "module.momentum_predictor.0.weight"])],
    "build_mocov3": [(S, {
        "module.base_encoder.conv1.weight": (64, 3, 7, 7), "module.base_encoder.fc.0.weight": (64, 512),
        "module.base_encoder.fc.1.weight": (64,), "module.base_encoder.fc.3.weight": (32, 64),
        "module.base_encoder.fc.4.running_var": (32,), "module.momentum_encoder.fc.4.running_mean": (32,),
        "module.momentum_encoder.layer4.1.conv2.weight": (512, 512, 3, 3),
        "module.predictor.0.weight": (64, 32), "module.predictor.3.weight": (32, 64),
    }, ["module.base_encoder.fc.0.bias", "module.base_encoder.fc.3.bias", "module.base_encoder.fc.4.weight",
        "module.predictor.4.running_mean", "module.predictor.3.bias", "module.base_encoder.fc.weight"])],
    "build_mocov3_vit": [(S, {
        "module.base_encoder.cls_token": (1, 1, 384), "module.base_encoder.pos_embed": (1, 197, 384),
        "module.base_encoder.patch_embed.proj.weight": (384, 3, 16, 16),
        "module.base_encoder.blocks.11.attn.qkv.weight": (1152, 384), "module.base_encoder.norm.weight": (384,),
        "module.base_encoder.head.0.weight": (64, 384), "module.base_encoder.head.1.weight": (64,),
        "module.base_encoder.head.3.weight": (64, 64), "module.base_encoder.head.6.weight": (32, 64),
        "module.base_encoder.head.7.running_var": (32,), "module.momentum_encoder.head.7.running_mean": (32,),
        "module.momentum_encoder.blocks.0.mlp.fc1.bias": (1536,),
        "module.predictor.0.weight": (64, 32), "module.predictor.3.weight": (32, 64),
        "module.predictor.4.running_var": (32,),
    }, ["module.base_encoder.head.0.bias", "module.base_encoder.head.7.weight", "module.predictor.4.weight",
        "module.base_encoder.fc.0.weight", "module.base_encoder.head.weight"])],
    "build_swav": [(S, {
        "module.conv1.weight": (64, 3, 7, 7), "module.layer4.2.conv3.weight": (2048, 512, 1, 1),
        "module.projection_head.0.weight": (64, 2048), "module.projection_head.1.running_var": (64,),
        "module.projection_head.3.bias": (32,), "module.prototypes.weight": (16, 32),
    }, ["module.fc.weight", "module.prototypes.bias", "module.projection_head.4.weight"])],
    "build_dino": [(part, {
        "module.backbone.conv1.weight": (64, 3, 7, 7), "module.head.mlp.0.weight": (64, 512),
        "module.head.mlp.2.weight": (64, 64), "module.head.mlp.4.weight": (32, 64),
        "module.head.last_layer.weight_g": (16, 1), "module.head.last_layer.weight_v": (16, 32),
    }, ["module.backbone.fc.weight", "module.head.mlp.1.weight", "module.head.last_layer.weight",
        "backbone.conv1.weight"]) for part in ("student", "teacher")],
    "build_dino_bnhead": [(part, {
        "module.head.mlp.0.weight": (64, 512), "module.head.mlp.1.running_var": (64,),
        "module.head.mlp.3.weight": (64, 64), "module.head.mlp.4.weight": (64,), "module.head.mlp.6.weight": (32, 64),
    }, ["module.head.mlp.2.weight", "module.head.mlp.7.weight"]) for part in ("student", "teacher")],
    "build_dino_vit": [(None, {
        "cls_token": (1, 1, 384), "pos_embed": (1, 197, 384), "patch_embed.proj.weight": (384, 3, 16, 16),
        "patch_embed.proj.bias": (384,), "blocks.0.norm1.weight": (384,), "blocks.11.attn.qkv.weight": (1152, 384),
        "blocks.11.attn.qkv.bias": (1152,), "blocks.5.attn.proj.bias": (384,), "blocks.3.mlp.fc1.weight": (1536, 384),
        "blocks.3.mlp.fc2.bias": (384,), "blocks.11.norm2.bias": (384,), "norm.weight": (384,), "norm.bias": (384,),
    }, ["head.weight", "blocks.12.norm1.weight", "fc_norm.weight"])],
    "build_vicreg": [("model", {
        "module.backbone.conv1.weight": (64, 3, 7, 7), "module.backbone.layer3.5.conv2.weight": (256, 256, 3, 3),
        "module.projector.0.weight": (64, 512), "module.projector.0.bias": (64,),
        "module.projector.4.running_var": (64,), "module.projector.6.weight": (32, 64),
    }, ["module.projector.6.bias", "module.projector.7.running_var", "module.backbone.fc.weight",
        "module.backbone.layer1.0.conv3.weight"])],
    "build_barlowtwins": [("model", {
        "module.backbone.conv1.weight": (64, 3, 7, 7), "module.backbone.layer4.2.bn3.weight": (2048,),
        "module.projector.0.weight": (64, 2048), "module.projector.1.running_mean": (64,),
        "module.projector.6.weight": (32, 64), "module.bn.running_var": (32,), "module.bn.num_batches_tracked": (),
    }, ["module.projector.0.bias", "module.projector.6.bias", "module.bn.weight", "module.bn.bias",
        "module.backbone.fc.weight"])],
    "build_lightly_byol": [(None, {
        "backbone.0.weight": (64, 3, 7, 7), "backbone.1.running_var": (64,), "backbone.4.0.conv1.weight": (64, 64, 3, 3),
        "backbone.7.1.bn2.bias": (512,), "projection_head.layers.0.weight": (64, 512),
        "projection_head.layers.1.running_mean": (64,), "projection_head.layers.3.weight": (32, 64),
        "projection_head.layers.3.bias": (32,), "prediction_head.layers.0.weight": (64, 32),
        "prediction_head.layers.3.weight": (32, 64), "backbone_momentum.7.1.conv2.weight": (512, 512, 3, 3),
        "projection_head_momentum.layers.3.bias": (32,),
    }, ["projection_head.layers.0.bias", "backbone.8.weight", "backbone.9.weight", "prediction_head_momentum.layers.0.weight",
        "backbone.conv1.weight"])],
    "build_lightly_simclr": [(None, {
        "backbone.0.weight": (64, 3, 7, 7), "projection_head.layers.0.weight": (64, 512),
        "projection_head.layers.3.weight": (32, 64), "projection_head.layers.4.weight": (32,),
        "projection_head.layers.4.running_var": (32,),
    }, ["projection_head.layers.0.bias", "projection_head.layers.3.bias", "backbone_momentum.0.weight"])],
    "build_lightly_tutorial": [("resnet18_parameters", {
        "0.weight": (64, 3, 7, 7), "1.running_mean": (64,), "4.0.conv1.weight": (64, 64, 3, 3),
        "7.1.bn2.running_var": (512,),
    }, ["backbone.0.weight", "fc.weight", "8.weight"])],
}

# Would ``torch.load(weights_only=True)`` read the official file? (DINO: argparse.Namespace;
# VICReg: a function of the training script.)
REFUSED_BY_WEIGHTS_ONLY = {"build_dino", "build_dino_bnhead", "build_vicreg"}

HIDDEN_LAYERS = {"build_resa_cifar": 2, "build_resa_imagenet": 2, "build_mocov3": 1, "build_mocov3_vit": 2, "build_swav": 1,
                 "build_dino": 2, "build_dino_bnhead": 2, "build_vicreg": 2, "build_barlowtwins": 2,
                 "build_lightly_byol": 1, "build_lightly_simclr": 1}


def test_every_builder_is_covered():
    assert set(BUILDERS) == set(KEYS) == set(zoo.__all__) - {"ZooCheckpoint"}
    assert {name.removeprefix("build_").split("_")[0] for name in BUILDERS} >= {
        "resa", "mocov3", "swav", "dino", "vicreg", "barlowtwins", "lightly"}


@pytest.mark.parametrize("builder", BUILDERS)
def test_file_layout_follows_the_official_code(built, builder):
    case = built(builder)
    assert case.default_branch in case.branches
    assert {"stem", "z", "eval_branch"} <= set(case.notes) or case.notes["z"].startswith("none")
    if builder in REFUSED_BY_WEIGHTS_ONLY:
        with pytest.raises(pickle.UnpicklingError):
            load(case)
        if builder == "build_vicreg":
            raw = load(case, weights_only=False, pickle_module=_stub_pickle_module())
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):
                raw = load(case)
    else:
        raw = load(case)
    if builder in TOP_LEVEL:
        assert set(raw) == TOP_LEVEL[builder]
    for where, present, absent in KEYS[builder]:
        state = raw if where is None else raw[where]
        for key, shape in present.items():
            assert key in state, key
            assert tuple(state[key].shape) == shape, (key, tuple(state[key].shape))
        for key in absent:
            assert key not in state, key
        assert not any(".padding." in key or key.endswith("padding") for key in state)  # the pad layer has no weights


def _stub_pickle_module():
    """A pickle module whose unpickler turns names of ``__main__`` into inert stubs."""

    class Stub:
        def __init__(self, name):
            self.name = name

        def __repr__(self):
            return f"<stub {self.name}>"

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if module == "__main__":
                return Stub(f"{module}.{name}")
            return super().find_class(module, name)

    return types.SimpleNamespace(Unpickler=Unpickler, load=pickle.load, __name__="stub_pickle")


def test_vicreg_pickles_the_training_scripts_function(built):
    case = built("build_vicreg")
    assert not hasattr(sys.modules["__main__"], "exclude_bias_and_norm")  # left as it was
    with pytest.raises(AttributeError, match="exclude_bias_and_norm"):
        load(case, weights_only=False)
    raw = load(case, weights_only=False, pickle_module=_stub_pickle_module())
    for group in raw["optimizer"]["param_groups"]:
        assert repr(group["weight_decay_filter"]) == "<stub __main__.exclude_bias_and_norm>"
        assert repr(group["lars_adaptation_filter"]) == "<stub __main__.exclude_bias_and_norm>"
    assert raw["optimizer"]["state"][0]["mu"].shape == raw["model"]["module.backbone.conv1.weight"].shape


def test_dino_args_is_an_argparse_namespace(built):
    raw = load(built("build_dino"), weights_only=False)
    assert isinstance(raw["args"], argparse.Namespace)
    assert raw["args"].arch == "resnet18" and raw["args"].use_bn_in_head is False
    assert set(raw["dino_loss"]) == {"center"}


@pytest.mark.parametrize("builder", BUILDERS)
def test_reference_forward_runs_in_eval_mode_and_branches_differ(built, builder):
    case = built(builder)
    x = images(case)
    outputs = {}
    with torch.no_grad():
        for name, reference in case.branches.items():
            assert not reference.training
            h = reference.h(x)
            assert h.shape[0] == len(x) and torch.isfinite(h).all()
            outputs[name] = h
            if builder in HIDDEN_LAYERS:
                z, hidden = reference.z(x), reference.hidden(x)
                assert torch.isfinite(z).all() and len(hidden) == HIDDEN_LAYERS[builder]
                assert all((p >= 0).all() for p in hidden) or case.notes["head_activation"] == "gelu"
            else:
                assert not hasattr(reference, "z") and not hasattr(reference, "hidden")
    values = list(outputs.values())
    for other in values[1:]:
        assert (other - values[0]).abs().max() > 1e-2  # momentum/teacher weights differ from online/student


def _torchvision_resnet(depth, state, cifar_padding=None):
    model = getattr(torchvision.models, f"resnet{depth}")()
    model.fc = torch.nn.Identity()
    if cifar_padding is not None:
        model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, cifar_padding, bias=False)
        model.maxpool = torch.nn.Identity()
    model.load_state_dict(state, strict=True)
    return model.eval()


def _strip(state, prefix, drop=()):
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and not k[len(prefix):].startswith(drop)}


# builder -> (depth, where, branch -> key prefix, keys dropped, CIFAR padding)
TORCHVISION = {
    "build_resa_imagenet": (18, "state_dict", {"online": "module.encoder.", "momentum": "module.momentum_encoder."}),
    "build_mocov3": (18, "state_dict", {"online": "module.base_encoder.", "momentum": "module.momentum_encoder."}),
    "build_swav": (50, "state_dict", {"online": "module."}),
    "build_dino": (18, "teacher", {"teacher": "module.backbone."}),
    "build_vicreg": (34, "model", {"online": "module.backbone."}),
    "build_barlowtwins": (50, "model", {"online": "module.backbone."}),
}


@pytest.mark.parametrize("builder", sorted(TORCHVISION))
def test_reference_h_equals_torchvision(built, builder):
    """Pad layer + 7x7 conv with padding 2 (ReSA/SwAV/VICReg) = torchvision's stem; key names too."""
    case = built(builder)
    depth, where, prefixes = TORCHVISION[builder]
    raw = load(case, weights_only=False, pickle_module=_stub_pickle_module())[where]
    x = images(case)
    for branch, prefix in prefixes.items():
        tv = _torchvision_resnet(depth, _strip(raw, prefix, ("fc.", "projection_head.", "prototypes.")))
        with torch.no_grad():
            torch.testing.assert_close(case.branches[branch].h(x), tv(x), rtol=1e-5, atol=1e-5)


def test_resa_cifar_stem_has_effective_padding_2(built):
    case = built("build_resa_cifar")
    state = _strip(load(case)["state_dict"], "module.momentum_encoder.")
    x = images(case)
    with torch.no_grad():
        expected = case.branches["momentum"].h(x)
        torch.testing.assert_close(expected, _torchvision_resnet(18, state, cifar_padding=2)(x), rtol=1e-5, atol=1e-5)
        assert (expected - _torchvision_resnet(18, state, cifar_padding=1)(x)).abs().max() > 1e-2


def test_lightly_backbones_are_torchvision_children(built):
    for builder, where, prefix in (("build_lightly_byol", None, "backbone_momentum."),
                                   ("build_lightly_simclr", None, "backbone."),
                                   ("build_lightly_tutorial", "resnet18_parameters", "")):
        case = built(builder)
        raw = load(case)
        state = _strip(raw if where is None else raw[where], prefix)
        resnet = torchvision.models.resnet18()
        backbone = torch.nn.Sequential(*list(resnet.children())[:-1])
        backbone.load_state_dict(state, strict=True)
        x = images(case)
        branch = "momentum" if "momentum" in prefix else "online"
        with torch.no_grad():
            torch.testing.assert_close(case.branches[branch].h(x), backbone.eval()(x).flatten(1), rtol=1e-5, atol=1e-5)


def test_z_is_what_each_loss_sees(built):
    x = None
    with torch.no_grad():
        barlow = built("build_barlowtwins")
        x = images(barlow)
        raw = load(barlow)["model"]
        ref = barlow.branches["online"]
        before_bn = ref.projector(ref.h(x))
        expected = (before_bn - raw["module.bn.running_mean"]) / torch.sqrt(raw["module.bn.running_var"] + 1e-5)
        torch.testing.assert_close(ref.z(x), expected, rtol=1e-5, atol=1e-5)

        swav = built("build_swav")  # Z is taken before SwAV's L2 normalisation
        assert not torch.allclose(swav.branches["online"].z(images(swav)).norm(dim=1), torch.ones(3), atol=1e-3)

        dino = built("build_dino")  # Z is the bottleneck, before the normalisation and last_layer
        teacher = load(dino, weights_only=False)["teacher"]
        z = dino.branches["teacher"].z(images(dino))
        assert z.shape[1] == teacher["module.head.last_layer.weight_v"].shape[1]

        simclr = built("build_lightly_simclr")  # the SimCLR head ends in an affine BatchNorm1d
        assert isinstance(simclr.branches["online"].projector[-1], torch.nn.BatchNorm1d)
        assert simclr.branches["online"].projector[-1].affine


@pytest.mark.parametrize("builder, heads, prefixes", [
    ("build_dino_vit", 6, {"teacher": ""}),
    ("build_mocov3_vit", 12, {"online": "module.base_encoder.", "momentum": "module.momentum_encoder."}),
])
def test_vit_reference_equals_timm(built, builder, heads, prefixes):
    """DINO's ViT-S has 6 heads, MoCo v3's 12: the weights alone do not say which."""
    pytest.importorskip("timm")
    from timm.models.vision_transformer import VisionTransformer

    case = built(builder)
    raw = load(case)
    raw = raw.get("state_dict", raw)
    x = images(case, n=2)
    for branch, prefix in prefixes.items():
        state = _strip(raw, prefix, ("head.",))
        outputs = {}
        for n in (heads, 18 - heads):
            model = VisionTransformer(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=n, num_classes=0)
            model.load_state_dict(state, strict=True)
            with torch.no_grad():
                outputs[n] = model.eval()(x)
        with torch.no_grad():
            torch.testing.assert_close(case.branches[branch].h(x), outputs[heads], rtol=1e-5, atol=1e-5)
        assert (outputs[heads] - outputs[18 - heads]).abs().max() > 1e-2
