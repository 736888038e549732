import argparse
import datetime
import json

import pytest
import torch
import torchvision

from clusterprobe import load_checkpoint, save_checkpoint
from clusterprobe.errors import ArchitectureMismatchError, CheckpointError, UnsafeCheckpointError, LayerError

X1 = torch.randn(6, 1, 8, 8)
X3 = torch.randn(6, 3, 8, 8)


def same_outputs(a, b, x):
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=0, atol=0)


def test_own_checkpoint_round_trip_with_branches(own_checkpoint):
    path, online, momentum = own_checkpoint
    loaded = load_checkpoint(path)
    assert loaded.format == "clusterprobe" and loaded.branch == "momentum"  # recorded default
    assert (loaded.epoch, loaded.step, loaded.method, loaded.dataset) == (3, 30, "resa", "digits")
    same_outputs(loaded.model, momentum, X1)
    same_outputs(load_checkpoint(path, branch="online").model, online, X1)
    assert len(loaded.sha256) == 64 and not loaded.model.training


def test_own_checkpoint_without_momentum_branch(tmp_path, model):
    path = save_checkpoint(tmp_path / "c.pt", model, epoch=1, method="simclr")
    assert load_checkpoint(path).branch == "online"
    with pytest.raises(CheckpointError, match="no momentum branch"):
        load_checkpoint(path, branch="momentum")


def test_solo_learn_checkpoint(solo_checkpoint):
    path, online, momentum = solo_checkpoint
    loaded = load_checkpoint(path)
    # ep=7 is Lightning's 0-based index of the epoch just finished: 8 epochs of training done
    assert (loaded.format, loaded.method, loaded.dataset, loaded.epoch) == ("solo-learn", "vicreg", "cifar10", 8)
    assert loaded.step == 800
    assert loaded.model.backbone.conv1.padding == (2, 2)  # solo-learn's CIFAR stem
    assert loaded.model.layer_dims() == {"H": 512, "P0": 64, "P1": 64, "Z": 32}
    same_outputs(loaded.model, online, X3)
    same_outputs(load_checkpoint(path, branch="momentum").model, momentum, X3)


def test_solo_learn_epoch_without_the_file_name_comes_from_lightning(tmp_path, solo_checkpoint):
    path, _, _ = solo_checkpoint
    renamed = path.with_name("last.ckpt")
    renamed.write_bytes(path.read_bytes())
    assert load_checkpoint(renamed).epoch == 8  # Lightning's "epoch": 7, saved at that epoch's end


def test_solo_learn_flat_args_json_and_prefixes(tmp_path, solo_checkpoint):
    path, online, _ = solo_checkpoint
    raw = torch.load(path, weights_only=True)
    raw["state_dict"] = {f"module._orig_mod.{k}": v for k, v in raw["state_dict"].items()}
    (tmp_path / "flat").mkdir()
    torch.save(raw, tmp_path / "flat" / "x-ep=2.ckpt")
    (tmp_path / "flat" / "args.json").write_text(json.dumps(
        {"method": "vicreg", "backbone": "resnet18", "dataset": "cifar100", "proj_output_dim": 32}))
    loaded = load_checkpoint(tmp_path / "flat" / "x-ep=2.ckpt")
    assert loaded.epoch == 3 and loaded.dataset == "cifar100"  # ep=2: Lightning's third epoch, done
    same_outputs(loaded.model, online, X3)


def test_solo_learn_args_that_do_not_match_the_weights_name_the_keys(solo_checkpoint):
    path, _, _ = solo_checkpoint
    args = json.loads((path.parent / "args.json").read_text())
    args["backbone"]["name"] = "resnet34"
    (path.parent / "args.json").write_text(json.dumps(args))
    with pytest.raises(ArchitectureMismatchError) as error:
        load_checkpoint(path)
    assert "missing keys: backbone.layer1.2.bn1.bias" in str(error.value)


def test_plain_torchvision_state_dict_gives_h_only(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18().eval()
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, tmp_path / "r18.pth")
    loaded = load_checkpoint(tmp_path / "r18.pth")
    assert loaded.format == "state-dict" and loaded.model.layer_names() == ["H"]
    reference.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), reference(x))
    with pytest.raises(LayerError, match="encoder only"):
        loaded.model.resolve_layer("P0")


def test_missing_and_unexpected_keys_are_listed(own_checkpoint, tmp_path):
    path, _, _ = own_checkpoint
    raw = torch.load(path, weights_only=True)
    del raw["momentum_state_dict"]["projector.4.running_var"]
    raw["momentum_state_dict"]["projector.9.weight"] = torch.zeros(3)
    torch.save(raw, tmp_path / "broken.pt")
    with pytest.raises(ArchitectureMismatchError) as error:
        load_checkpoint(tmp_path / "broken.pt")
    message = str(error.value)
    assert "missing keys: projector.4.running_var" in message and "unexpected keys: projector.9.weight" in message


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="neither a PyTorch zip archive nor a pickle"):
        load_checkpoint(tmp_path / "notes.txt")


def test_truncated_checkpoint(own_checkpoint, tmp_path):
    path, _, _ = own_checkpoint
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "empty.pt")


def test_unknown_format_names_the_known_ones(tmp_path):
    torch.save({"weight": torch.zeros(2, 2), "bias": torch.zeros(2)}, tmp_path / "linear.pt")
    with pytest.raises(CheckpointError, match="unknown format.*solo-learn"):
        load_checkpoint(tmp_path / "linear.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a dict of weights"):
        load_checkpoint(tmp_path / "list.pt")


def test_pickled_objects_are_refused_unless_trusted(solo_checkpoint):
    path, online, _ = solo_checkpoint
    raw = torch.load(path, weights_only=True)
    raw["hyper_parameters"] = datetime.timedelta(days=1)  # any class beyond plain values
    torch.save(raw, path)
    with pytest.raises(UnsafeCheckpointError, match="trust=True"):
        load_checkpoint(path)
    same_outputs(load_checkpoint(path, trust=True).model, online, X3)


def test_argparse_namespace_is_read_without_trust(solo_checkpoint):
    # DINO and many training scripts store their arguments as a Namespace: restoring one only
    # sets attributes, so it needs no trust.
    path, online, _ = solo_checkpoint
    raw = torch.load(path, weights_only=True)
    raw["hyper_parameters"] = argparse.Namespace(lr=0.1)
    torch.save(raw, path)
    same_outputs(load_checkpoint(path).model, online, X3)


def test_solo_learn_checkpoint_needs_its_args_json(solo_checkpoint):
    path, _, _ = solo_checkpoint
    (path.parent / "args.json").unlink()
    with pytest.raises(CheckpointError, match="args.json"):
        load_checkpoint(path)


def test_save_is_atomic_when_writing_fails(own_checkpoint, model, monkeypatch):
    path, _, momentum = own_checkpoint
    before = path.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, model, epoch=4)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind


def test_momentum_branch_may_lack_the_online_predictor(tmp_path):
    import copy
    import dataclasses

    from conftest import tiny_model

    online = tiny_model(predictor=(16, 32))
    momentum = copy.deepcopy(tiny_model(seed=4))
    momentum.config = dataclasses.replace(momentum.config, predictor=None)
    path = save_checkpoint(tmp_path / "byol.pt", online, epoch=2, method="byol", momentum_model=momentum)
    assert load_checkpoint(path).model.predictor is None  # momentum branch by default
    same_outputs(load_checkpoint(path).model, momentum, X1)
    assert load_checkpoint(path, branch="online").model.predictor is not None


def test_raw_pickle_is_refused_with_only_our_message(tmp_path, recwarn):
    """Issue 9: torch's pickle-protocol UserWarning used to print before the clear error."""
    import pickle

    path = tmp_path / "raw.pt"
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": {}, "args": argparse.Namespace(lr=0.1)}, handle, protocol=4)
    with pytest.raises(UnsafeCheckpointError, match="trust=True") as error:
        load_checkpoint(path)
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]
    # names the commands that have --trust (report and train do not)
    assert "on the command line `clusterprobe extract` and `clusterprobe layers` take --trust" in str(error.value)


def test_solo_learn_before_1_0_called_the_backbone_encoder(solo_checkpoint):
    path, online, momentum = solo_checkpoint
    raw = torch.load(path, weights_only=True)
    raw["state_dict"] = {k.replace("backbone.", "encoder."): v for k, v in raw["state_dict"].items()}
    assert any(k.startswith("momentum_encoder.") for k in raw["state_dict"])
    torch.save(raw, path)
    same_outputs(load_checkpoint(path).model, online, X3)
    same_outputs(load_checkpoint(path, branch="momentum").model, momentum, X3)


# -- Vision Transformers (timm's keys; DINO, solo-learn and MoCo v3 build theirs with the same names)
def _perturbed_vit(scale: float = 0.02, **options):
    """A timm VisionTransformer with every weight moved off its initialisation, in eval mode."""
    import timm

    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(**options)
    with torch.no_grad():
        for parameter in vit.parameters():
            parameter.add_(torch.randn_like(parameter) * scale)
    return vit.eval()


def _timm_vit(**kwargs):
    """timm's vit_tiny (192-d, 12 blocks, 3 heads) on 32 px inputs in 8 px patches."""
    return _perturbed_vit(img_size=32, patch_size=8, embed_dim=192, depth=12, num_heads=3, **kwargs)


def test_plain_timm_vit_gives_h_and_records_the_heads_assumption(tmp_path):
    from clusterprobe.errors import AssumptionWarning

    reference = _timm_vit(num_classes=10)
    torch.save(reference.state_dict(), tmp_path / "vit.pth")
    with pytest.warns(AssumptionWarning, match="assumed 3 attention heads.*--vit-heads"):
        loaded = load_checkpoint(tmp_path / "vit.pth")
    assert loaded.model.layer_names() == ["H"] and loaded.model.config.backbone == "vit"
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = reference.forward_head(reference.forward_features(x), pre_logits=True)
        torch.testing.assert_close(loaded.model(x), expected, rtol=0, atol=0)
    settled = load_checkpoint(tmp_path / "vit.pth", vit_heads=3)
    assert settled.assumptions == [] and settled.model.config.vit["num_heads"] == 3
    with pytest.raises(CheckpointError, match="heads"):
        load_checkpoint(tmp_path / "vit.pth", vit_heads=5)  # does not divide 192


def test_solo_learn_vit_names_its_architecture_in_args_json(tmp_path):
    from clusterprobe.extract import LayerCapture

    backbone = _timm_vit(num_classes=0)
    projector = torch.nn.Sequential(torch.nn.Linear(192, 64), torch.nn.BatchNorm1d(64), torch.nn.ReLU(),
                                    torch.nn.Linear(64, 32)).eval()
    projector[1].running_mean.uniform_(-0.3, 0.3)
    state = {**{f"backbone.{k}": v for k, v in backbone.state_dict().items()},
             **{f"projector.{k}": v for k, v in projector.state_dict().items()}}
    folder = tmp_path / "solo"
    folder.mkdir()
    torch.save({"epoch": 3, "pytorch-lightning_version": "2.1.0", "state_dict": state}, folder / "byol-ep=3.ckpt")
    (folder / "args.json").write_text(json.dumps({"method": "byol", "backbone": {"name": "vit_tiny"},
                                                  "data": {"dataset": "cifar10"}}))
    loaded = load_checkpoint(folder / "byol-ep=3.ckpt")
    assert loaded.assumptions == [] and loaded.model.layer_names() == ["H", "P0", "Z"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        h = backbone(x)
        torch.testing.assert_close(loaded.model.encode(x), h, rtol=0, atol=0)
        torch.testing.assert_close(loaded.model(x), projector(h), rtol=0, atol=0)
        # a transformer block is a layer too: its class token, (batch, 192)
        spec = loaded.model.resolve_layer("backbone.blocks.5")
        with LayerCapture(loaded.model, [spec]) as capture:
            block = capture.run(x)["backbone.blocks.5"]
        tokens = backbone.blocks[:6](backbone._pos_embed(backbone.patch_embed(x)))
        torch.testing.assert_close(block, tokens[:, 0], rtol=0, atol=0)


def test_solo_learn_vibcreg_projector_uses_gelu(solo_checkpoint):
    # solo-learn's solo/methods/vibcreg.py: Linear, BN, GELU, Linear, BN, GELU, Linear, then
    # IterNorm or nn.Identity: the same keys as its VICReg projector, with GELU instead of ReLU.
    import copy

    path, online, _ = solo_checkpoint
    args = json.loads((path.parent / "args.json").read_text())
    args["method"] = "vibcreg"
    (path.parent / "args.json").write_text(json.dumps(args))
    reference = copy.deepcopy(online)
    reference.projector = torch.nn.Sequential(
        *[torch.nn.GELU() if isinstance(m, torch.nn.ReLU) else m for m in reference.projector],
        torch.nn.Identity())
    loaded = load_checkpoint(path)
    assert loaded.assumptions == [] and any("GELU" in fact for fact in loaded.facts)
    same_outputs(loaded.model, reference, X3)


def test_solo_learn_vibcreg_iternorm_is_refused_by_name(solo_checkpoint):
    path, _, _ = solo_checkpoint
    args = json.loads((path.parent / "args.json").read_text())
    args["method"] = "vibcreg"
    (path.parent / "args.json").write_text(json.dumps(args))
    raw = torch.load(path, weights_only=True)
    raw["state_dict"].update({"projector.7.weight": torch.ones(1, 32), "projector.7.bias": torch.zeros(1, 32),
                              "projector.7.running_mean": torch.zeros(32, 1, 1),
                              "projector.7.running_wm": torch.eye(1).expand(32, 1, 1).clone()})
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="IterNorm"):
        load_checkpoint(path)


def _solo_learn_vit_with_12_heads(folder, args):
    backbone = _perturbed_vit(img_size=32, patch_size=8, embed_dim=192, depth=12, num_heads=12, num_classes=0)
    folder.mkdir()
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    torch.save({"epoch": 3, "pytorch-lightning_version": "2.1.0", "state_dict": state}, folder / "m-ep=3.ckpt")
    (folder / "args.json").write_text(json.dumps(args))
    return folder / "m-ep=3.ckpt", backbone.eval()


@pytest.mark.parametrize("method", ["mocov3", "mae"])
def test_solo_learn_mocov3_and_mae_vits_have_their_own_heads(tmp_path, method):
    # solo-learn's solo/backbones/vit/__init__.py builds vit_tiny/vit_small for method mocov3 from
    # vit_mocov3.py and for mae from vit_mae.py: both with num_heads=12 (timm's have 3 and 6).
    path, backbone = _solo_learn_vit_with_12_heads(
        tmp_path / "solo", {"method": method, "backbone": {"name": "vit_tiny"}, "data": {"dataset": "cifar10"}})
    loaded = load_checkpoint(path)
    assert loaded.model.config.vit["num_heads"] == 12 and loaded.assumptions == []
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.encode(x), backbone(x), rtol=0, atol=0)


def test_solo_learn_argparse_era_mocov3_vit_heads_are_an_assumption(tmp_path):
    # The flat (argparse) args.json predates solo-learn 1.0.6: releases up to 1.0.5 built MoCo v3's
    # ViTs with timm's heads, master from July 2022 (commit 7af3e44) with 12; the weights cannot tell.
    from clusterprobe.errors import AssumptionWarning

    path, backbone = _solo_learn_vit_with_12_heads(
        tmp_path / "solo", {"method": "mocov3", "backbone": "vit_tiny", "dataset": "cifar10"})
    with pytest.warns(AssumptionWarning, match="attention heads"):
        assert load_checkpoint(path).model.config.vit["num_heads"] == 3
    loaded = load_checkpoint(path, vit_heads=12)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.encode(x), backbone(x), rtol=0, atol=0)


def _dino_interpolate_pos_encoding(pos_embed, rows, cols):
    """DINO's vision_transformer.py interpolate_pos_encoding, restated: the patch grid's position
    embedding resized bicubically by the scale factor (n + 0.1) / N, without antialiasing."""
    cls, patch = pos_embed[:, :1], pos_embed[:, 1:]
    side, dim = int(patch.shape[1] ** 0.5), patch.shape[2]
    grid = patch.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, scale_factor=((rows + 0.1) / side, (cols + 0.1) / side),
                                           mode="bicubic")
    assert grid.shape[-2:] == (rows, cols)
    return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)], dim=1)


@pytest.mark.parametrize("size", [32, 96])
def test_dino_vit_at_another_input_size_resizes_the_position_embedding_as_dino_does(tmp_path, size):
    # facebookresearch/dino main_dino.py saves {"student", "teacher", "args", "epoch", ...}; its ViT
    # (vision_transformer.py) adds interpolate_pos_encoding(x, w, h) for inputs of another size.
    import timm

    native = _perturbed_vit(0.05, img_size=64, patch_size=16, embed_dim=192, depth=12, num_heads=3, num_classes=0)
    backbone = {f"backbone.{k}": v for k, v in native.state_dict().items()}
    torch.save({"student": {f"module.{k}": v for k, v in backbone.items()}, "teacher": backbone, "epoch": 5,
                "args": argparse.Namespace(arch="vit_tiny", patch_size=16)}, tmp_path / "checkpoint.pth")
    loaded = load_checkpoint(tmp_path / "checkpoint.pth")
    assert (loaded.format, loaded.branch, loaded.assumptions) == ("dino", "teacher", [])
    reference = timm.models.vision_transformer.VisionTransformer(
        img_size=size, patch_size=16, embed_dim=192, depth=12, num_heads=3, num_classes=0).eval()
    state = native.state_dict()
    state["pos_embed"] = _dino_interpolate_pos_encoding(state["pos_embed"], size // 16, size // 16)
    reference.load_state_dict(state)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.encode(x), reference(x), rtol=1e-5, atol=1e-5)
        # at the size it was trained for, nothing is resized
        x = torch.randn(2, 3, 64, 64)
        torch.testing.assert_close(loaded.model.encode(x), native.eval()(x), rtol=0, atol=0)


def test_encoder_projector_files_not_laid_out_as_resa_leave_the_stem_padding_an_assumption(tmp_path):
    # ReSA's projector (winci-ai/resa_cifar src/model.py get_projector) always ends in
    # BatchNorm1d(emb, affine=False); a file with encoder.* + projector.* whose projector does not
    # is some other code base's, whose CIFAR stem padding ReSA's code does not tell.
    from clusterprobe.errors import AssumptionWarning

    torch.manual_seed(0)
    encoder = torchvision.models.resnet18()
    encoder.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    encoder.maxpool, encoder.fc = torch.nn.Identity(), torch.nn.Identity()
    projector = torch.nn.Sequential(torch.nn.Linear(512, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32))
    state = {**{f"encoder.{k}": v for k, v in encoder.state_dict().items()},
             **{f"projector.{k}": v for k, v in projector.state_dict().items()}}
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "simclr.pth")
    with pytest.warns(AssumptionWarning) as record:
        loaded = load_checkpoint(tmp_path / "simclr.pth")
    assert loaded.format != "resa" and loaded.branch == "online"
    assert [("stem" in str(w.message), "activation" in str(w.message)) for w in record] == [(True, False), (False, True)]
    exact = load_checkpoint(tmp_path / "simclr.pth", stem_padding=1, head_activation="relu")
    assert exact.assumptions == []
    same_outputs(exact.model, torch.nn.Sequential(encoder, projector), X3)


def test_lightly_swav_model_with_prototypes_and_queues_loads(tmp_path):
    # lightly-ai/lightly examples/pytorch/swav.py and swav_queue.py: backbone (ResNet children),
    # projection_head = SwaVProjectionHead (layers: Linear(no bias), BN, ReLU, Linear), prototypes =
    # SwaVPrototypes (heads.0.weight/bias), and in swav_queue.py queues = MemoryBankModules (buffers).
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(*list(torchvision.models.resnet18().children())[:-1])
    head = torch.nn.Sequential(torch.nn.Linear(512, 64, bias=False), torch.nn.BatchNorm1d(64), torch.nn.ReLU(),
                               torch.nn.Linear(64, 32))
    head[1].running_mean.uniform_(-0.5, 0.5)
    state = {**{f"backbone.{k}": v for k, v in backbone.state_dict().items()},
             **{f"projection_head.layers.{k}": v for k, v in head.state_dict().items()},
             "prototypes.heads.0.weight": torch.randn(16, 32), "prototypes.heads.0.bias": torch.randn(16),
             "queues.0.bank": torch.randn(128, 32), "queues.0.bank_ptr": torch.zeros(1, dtype=torch.long)}
    torch.save(state, tmp_path / "swav.pth")
    loaded = load_checkpoint(tmp_path / "swav.pth")
    assert loaded.format == "lightly" and loaded.assumptions == []
    x = torch.randn(2, 3, 32, 32)
    same_outputs(loaded.model, torch.nn.Sequential(backbone, torch.nn.Flatten(1), head), x)


def test_args_json_for_a_checkpoint_that_is_not_solo_learn_is_refused(tmp_path, own_checkpoint):
    """--args-json was silently ignored for other formats: the user believed it applied."""
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"method": "vicreg", "backbone": {"name": "resnet50"}}))
    reference = torchvision.models.resnet18()
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, tmp_path / "r18.pth")
    with pytest.raises(CheckpointError, match="describes a solo-learn checkpoint.*r18.pth is not one"):
        load_checkpoint(tmp_path / "r18.pth", args_json=args)
    path, _, _ = own_checkpoint
    with pytest.raises(CheckpointError, match="written by clusterprobe's trainer"):
        load_checkpoint(path, args_json=args)
