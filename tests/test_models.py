import pytest
import torch
import torchvision

from clusterprobe import build_model
from clusterprobe.errors import ClusterprobeError, LayerError
from clusterprobe.extract import LayerCapture
from clusterprobe.models import ModelConfig, ResNetBackbone, SSLModel, resa_projector


def test_resa_architecture_matches_the_specification():
    model = build_model("resnet18").eval()  # CIFAR defaults: 3x3 stem, padding 2, no max-pool
    assert model.backbone.conv1.kernel_size == (3, 3) and model.backbone.conv1.stride == (1, 1)
    assert model.backbone.conv1.padding == (2, 2)
    assert isinstance(model.backbone.maxpool, torch.nn.Identity)
    # resa.md: 32x32 input -> 34x34 after the stem -> layer4 maps 5x5
    shapes = []
    handle = model.backbone.layer4.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[2:])))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    handle.remove()
    assert shapes == [(5, 5)]
    assert model.layer_dims() == {"H": 512, "P0": 2048, "P1": 2048, "Z": 512}
    kinds = [type(m).__name__ for m in model.projector]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU"] * 2 + ["Linear", "BatchNorm1d"]
    assert model.projector[-1].affine is False
    assert model.config.projector == resa_projector(512)


@pytest.mark.parametrize("name,width,dim", [("resnet18", 8, 64), ("resnet34", 4, 32), ("resnet50", 4, 128)])
def test_width_option_scales_every_stage(name, width, dim):
    backbone = ResNetBackbone(name, width=width, cifar_stem=True, stem_padding=2)
    assert backbone.out_dim == dim
    assert backbone.conv1.padding == (2, 2)
    assert backbone(torch.randn(2, 3, 32, 32)).shape == (2, dim)


def test_standard_width_loads_torchvision_weights_and_gives_the_same_pooled_features():
    torch.manual_seed(0)
    reference = torchvision.models.resnet18().eval()
    backbone = ResNetBackbone("resnet18", cifar_stem=False).eval()
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    backbone.load_state_dict(state)
    reference.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), reference(x))


def test_hidden_layers_are_tapped_after_or_before_the_activation(model):
    x = torch.randn(16, 1, 8, 8)
    post = model.resolve_layer("P0")
    pre = model.resolve_layer("P0", pre_activation=True)
    assert post.module == "projector.2" and pre.module == "projector.1"
    with torch.no_grad(), LayerCapture(model, [post, model.resolve_layer("H")]) as capture:
        out_post = capture.run(x)
    with torch.no_grad(), LayerCapture(model, [pre]) as capture:
        out_pre = capture.run(x)["P0"]
    with torch.no_grad():
        expected_pre = model.projector[1](model.projector[0](out_post["H"]))
    torch.testing.assert_close(out_pre, expected_pre)
    # The pre-activation copy survives the in-place ReLU that follows it.
    assert (out_pre < 0).any()
    torch.testing.assert_close(out_post["P0"], torch.relu(expected_pre))


def test_module_paths_are_layers_and_spatial_maps_are_pooled(model):
    spec = model.resolve_layer("backbone.layer3")
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad(), LayerCapture(model, [spec]) as capture:
        out = capture.run(x)["backbone.layer3"]
        fmap = model.backbone.layer3(model.backbone.layer2(model.backbone.layer1(
            model.backbone.relu(model.backbone.bn1(model.backbone.conv1(x))))))
    torch.testing.assert_close(out, fmap.mean(dim=(2, 3)))


def test_unknown_layer_lists_the_available_ones_and_suggests_the_closest(model):
    with pytest.raises(LayerError) as error:
        model.resolve_layer("backbone.layr3")
    assert "H, P0, P1, Z" in str(error.value) and "Did you mean 'backbone.layer3'" in str(error.value)
    with pytest.raises(LayerError, match="the projector has 2 hidden"):
        model.resolve_layer("P7")


def test_encoder_only_model_has_no_projector_layers():
    model = build_model("resnet18", width=4, projector_dims=None)
    assert model.layer_names() == ["H"]
    with pytest.raises(LayerError, match="encoder only"):
        model.resolve_layer("Z")


def test_bad_architecture_arguments_are_explained():
    with pytest.raises(ClusterprobeError, match="resnet18, resnet34, resnet50"):
        build_model("resnet19")
    with pytest.raises(ClusterprobeError, match="unknown fields"):
        ModelConfig.from_dict({"backbone": "resnet18", "depth": 3})
    config = ModelConfig(width=8, projector=resa_projector(512))
    with pytest.raises(ClusterprobeError, match="expects 512-d input"):
        SSLModel(config)


def head_state(*layers):
    """A flat head's tensors: ('L', in, out) Linear, ('B', dim, affine) BatchNorm, None an activation."""
    state = {}
    for i, layer in enumerate(layers):
        if layer is None:
            continue
        if layer[0] == "L":
            state[f"projector.{i}.weight"] = torch.zeros(layer[2], layer[1])
        else:
            state.update({f"projector.{i}.running_mean": torch.zeros(layer[1]),
                          f"projector.{i}.running_var": torch.ones(layer[1])})
            if layer[2]:
                state.update({f"projector.{i}.weight": torch.ones(layer[1]), f"projector.{i}.bias": torch.zeros(layer[1])})
    return state


def test_a_head_is_inferred_as_one_chain():
    from clusterprobe.models import describe_from_state_dict

    resa = head_state(("L", 16, 8), ("B", 8, True), None, ("L", 8, 4), ("B", 4, False))
    assert [layer["type"] for layer in describe_from_state_dict(resa, "projector.")] == [
        "linear", "batchnorm", "relu", "linear", "batchnorm"]


@pytest.mark.parametrize("extra, message", [
    # after an affine-free BN (ReSA's end): a fitting 4x4 Linear used to add a made-up P-layer
    ({"projector.6.weight": torch.zeros(4, 4)},
     r"projector.4 is an affine-free BatchNorm, which ends a head, yet layers follow it. .*: projector.6.weight\. If they are stray, remove them"),
    # a gap of two empty indices
    ({"projector.4.running_mean": None, "projector.4.running_var": None, "projector.7.weight": torch.zeros(2, 4)},
     r"projector.4 and projector.5 hold no tensors .*: projector.7.weight\."),
    # a Linear that does not take the width before it (the matmul that used to fail in extract)
    ({"projector.4.running_mean": None, "projector.4.running_var": None, "projector.5.weight": torch.zeros(3, 7)},
     r"projector.5.weight has shape \(3, 7\): it takes 7 inputs but the layer before gives 4"),
])
def test_stray_head_keys_are_refused_by_name(extra, message):
    from clusterprobe.errors import ArchitectureMismatchError
    from clusterprobe.models import describe_from_state_dict

    state = head_state(("L", 16, 8), ("B", 8, True), None, ("L", 8, 4), ("B", 4, False))
    for key, value in extra.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    with pytest.raises(ArchitectureMismatchError, match=message):
        describe_from_state_dict(state, "projector.")


@pytest.mark.parametrize("backbone, calls", [("resnet18", 2), ("resnet50", 3)])
def test_a_block_relu_runs_several_times_per_forward_and_is_refused(backbone, calls):
    # torchvision's blocks call their one ReLU module after bn1 (bn2) and after the addition: a hook
    # on it fires `calls` times and the last call, the block's output, used to be recorded silently
    # under the name backbone.layer1.0.relu.
    torch.manual_seed(0)
    model = build_model(backbone, width=4, projector_dims=(8, 4)).eval()
    fired = []
    handle = model.backbone.layer1[0].relu.register_forward_hook(lambda m, i, o: fired.append(o.clone()))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        block_out = model.backbone.layer1[0](model.backbone.maxpool(model.backbone.relu(
            model.backbone.bn1(model.backbone.conv1(x)))))
    handle.remove()
    assert len(fired) == calls and torch.equal(fired[-1], block_out)
    with pytest.raises(LayerError, match=r"calls its one ReLU module .* Tap backbone.layer1.0 for the block's output"):
        model.resolve_layer("backbone.layer1.0.relu")
    # the stem's ReLU and the blocks' other modules run once and stay tappable
    assert model.resolve_layer("backbone.relu").module == "backbone.relu"
    assert model.resolve_layer("backbone.layer1.0.bn1").module == "backbone.layer1.0.bn1"


@pytest.mark.parametrize("training", [False, True])
def test_h_p0_p1_z_are_what_a_plain_forward_of_the_resa_head_gives(training):
    # architecture.md / resa.md: H pooled encoder output, P0/P1 after each hidden block's ReLU
    # (pre-activation: the BatchNorm output), Z after the affine-free BatchNorm; in eval mode and,
    # with batch statistics, in training mode (each forward from the same starting buffers)
    import copy
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = build_model("resnet18", width=4, projector_dims=(16, 16, 8))
    with torch.no_grad():
        for module in model.projector:
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                if module.affine:
                    module.weight.uniform_(0.5, 2)
                    module.bias.uniform_(-1, 1)
    model.train(training)
    x = torch.randn(6, 3, 8, 8)
    names = ["H", "P0", "P1", "Z"]
    specs = [model.resolve_layer(n) for n in names]
    pre_specs = [model.resolve_layer(n, pre_activation=True) for n in ("P0", "P1")]
    plain = copy.deepcopy(model)
    with torch.no_grad():
        with LayerCapture(copy.deepcopy(model), specs) as capture:
            post = capture.run(x)
        pre_model = copy.deepcopy(model)
        with LayerCapture(pre_model, pre_specs) as capture:
            pre = capture.run(x)
        h = plain.backbone(x)
        linear, bn = plain.projector[0], plain.projector[1]
        b0 = bn(linear(h))
        b1 = plain.projector[4](plain.projector[3](F.relu(b0)))
        z = plain.projector[7](plain.projector[6](F.relu(b1)))
    expected = {"H": h, "P0": F.relu(b0), "P1": F.relu(b1), "Z": z}
    for name in names:
        torch.testing.assert_close(post[name], expected[name], rtol=0, atol=0)
    torch.testing.assert_close(pre["P0"], b0, rtol=0, atol=0)
    torch.testing.assert_close(pre["P1"], b1, rtol=0, atol=0)
    assert (pre["P0"] < 0).any() and (pre["P1"] < 0).any()  # not overwritten by the in-place ReLU
    assert plain.projector[7].affine is False and plain.projector[7].weight is None


@pytest.mark.parametrize("name, in_channels", [("resnet18", 3), ("resnet50", 1)])
def test_cifar_stem_equals_torchvision_with_solo_learns_stem(name, in_channels):
    # solo-learn (and, with a 1-pixel pad before a padding-1 conv, the ReSA reference code):
    # torchvision's ResNet with conv1 = 3x3, stride 1, padding 2 and no max-pool
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)()
    reference.conv1 = torch.nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=2, bias=False)
    reference.maxpool = torch.nn.Identity()
    reference.fc = torch.nn.Identity()
    backbone = ResNetBackbone(name, cifar_stem=True, in_channels=in_channels)
    backbone.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, in_channels, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone.eval()(x), reference.eval()(x), rtol=0, atol=0)
        padded = torch.nn.functional.pad(x, (1, 1, 1, 1))  # the ReSA code's ConstantPad2d(1)
        torch.testing.assert_close(backbone.conv1(x), torch.nn.functional.conv2d(padded, backbone.conv1.weight, padding=1))


def test_a_module_that_runs_twice_per_forward_is_refused_at_capture():
    """Whatever path resolve_layer lets through: a hook that fires twice keeps only the last
    output (torchvision's block relu: the block's output), so the capture refuses it."""
    from clusterprobe.models.model import LayerSpec

    model = build_model("resnet18", width=4, in_channels=1, projector_dims=(16, 16, 8)).eval()
    spec = LayerSpec("relu", "backbone.layer1.0.relu")  # bypasses resolve_layer's own refusal
    with torch.no_grad(), LayerCapture(model, [spec, model.resolve_layer("H")]) as capture:
        with pytest.raises(LayerError, match=r"backbone.layer1.0.relu \(2 times\)"):
            capture.run(torch.randn(2, 1, 8, 8))


def test_cifar_stem_is_initialised_as_solo_learn_and_the_resa_code_build_it():
    """They build torchvision's resnet18, then replace conv1 by a fresh nn.Conv2d (PyTorch's
    default initialisation); the same seed gives the same weights here."""
    torch.manual_seed(0)
    ours = ResNetBackbone("resnet18", cifar_stem=True, stem_padding=2)
    torch.manual_seed(0)
    reference = torchvision.models.resnet18()
    reference.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)
    torch.testing.assert_close(ours.conv1.weight, reference.conv1.weight, rtol=0, atol=0)
    torch.testing.assert_close(ours.layer4[1].conv2.weight, reference.layer4[1].conv2.weight, rtol=0, atol=0)
