"""What a checkpoint does not determine is never guessed silently (issue 12).

A plain ``backbone.*`` + ``projector.*`` state dict says neither the CIFAR stem's padding nor the
head's activation. The reference models here are built with torchvision and torch.nn directly
(not clusterprobe), so a wrong default shows up as a difference in the outputs.
"""

import json
import warnings

import pytest
import torch
import torchvision
from torch import nn
from typer.testing import CliRunner

from cli.main import app
from clusterprobe import load_checkpoint
from clusterprobe.errors import AssumptionWarning, CheckpointError

runner = CliRunner()


class PlainModel(nn.Module):
    """A torchvision ResNet-18 with a 3x3 CIFAR stem of the given padding and an MLP head."""

    def __init__(self, padding: int, activation: type[nn.Module], channels: int = 3):
        super().__init__()
        torch.manual_seed(padding)
        self.backbone = torchvision.models.resnet18()
        self.backbone.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=padding, bias=False)
        self.backbone.maxpool = nn.Identity()
        self.backbone.fc = nn.Identity()
        self.projector = nn.Sequential(nn.Linear(512, 64), nn.BatchNorm1d(64), activation(), nn.Linear(64, 16))
        for module in self.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
        self.eval()

    def forward(self, x):
        return self.projector(self.backbone(x))


X = torch.randn(3, 3, 32, 32)


def save_plain(tmp_path, padding=1, activation=nn.ReLU, channels=3):
    reference = PlainModel(padding, activation, channels)
    path = tmp_path / f"plain_pad{padding}_{activation.__name__}.pth"
    torch.save({"state_dict": reference.state_dict(), "epoch": 12}, path)
    return path, reference


def outputs(model, x=X):
    with torch.no_grad():
        return model.eval()(x)


def test_undetermined_stem_and_activation_are_warned_and_recorded(tmp_path):
    path, reference = save_plain(tmp_path, padding=1)
    with pytest.warns(AssumptionWarning) as caught:
        loaded = load_checkpoint(path)
    messages = " ".join(str(w.message) for w in caught)
    assert "--stem-padding" in messages and "--head-activation" in messages
    assert len(loaded.assumptions) == 2 and loaded.provenance()["assumptions"] == loaded.assumptions
    assert loaded.model.backbone.conv1.padding == (2, 2)  # the documented default
    assert not torch.allclose(outputs(loaded.model), outputs(reference))  # padding 1 was right here


def test_options_settle_the_assumptions_and_give_the_exact_model(tmp_path):
    path, reference = save_plain(tmp_path, padding=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AssumptionWarning)
        loaded = load_checkpoint(path, stem_padding=1, head_activation="relu")
    assert loaded.assumptions == [] and loaded.epoch == 12
    torch.testing.assert_close(outputs(loaded.model), outputs(reference), rtol=0, atol=0)


def test_gelu_head_needs_the_option(tmp_path):
    path, reference = save_plain(tmp_path, padding=2, activation=nn.GELU)
    with pytest.warns(AssumptionWarning):
        relu = load_checkpoint(path)
    assert not torch.allclose(outputs(relu.model), outputs(reference))
    with warnings.catch_warnings():
        warnings.simplefilter("error", AssumptionWarning)
        gelu = load_checkpoint(path, head_activation="gelu", stem_padding=2)
    torch.testing.assert_close(outputs(gelu.model), outputs(reference), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="head_activation must be one of"):
        load_checkpoint(path, head_activation="tanh")


def test_branch_names_and_aliases(own_checkpoint, solo_checkpoint):
    path, online, momentum = own_checkpoint
    teacher = load_checkpoint(path, branch="teacher")
    assert teacher.branch == "momentum" and teacher.branches == ("online", "momentum")
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(outputs(teacher.model, x), outputs(momentum, x), rtol=0, atol=0)
    torch.testing.assert_close(outputs(load_checkpoint(path, branch="student").model, x), outputs(online, x), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="Unknown branch 'ema'"):
        load_checkpoint(path, branch="ema")


def test_a_branch_the_file_lacks_is_refused_naming_those_it_has(tmp_path):
    path, _ = save_plain(tmp_path)
    with pytest.raises(CheckpointError, match="has no momentum branch; it has online"):
        load_checkpoint(path, branch="momentum", stem_padding=1, head_activation="relu")


def test_cli_prints_assumptions_and_records_them_in_the_bank(tmp_path):
    path, _ = save_plain(tmp_path, padding=1, channels=1)
    result = runner.invoke(app, ["layers", str(path)])
    assert result.exit_code == 0, result.output
    assert "Assumed (the file does not say" in result.output and "--stem-padding 1" in result.output
    result = runner.invoke(app, ["layers", str(path), "--stem-padding", "1", "--head-activation", "relu"])
    assert "Assumed: nothing" in result.output and "zero padding 1" in result.output

    out = tmp_path / "bank"
    common = ["extract", str(path), "--dataset", "digits", "--out", str(out), "--layers", "H,Z"]
    result = runner.invoke(app, common)
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "--stem-padding" in result.output
    meta = json.loads((out / "meta.json").read_text())
    assert len(meta["checkpoint"]["assumptions"]) == 2
    # The same file rebuilt with another stem is another bank: never reused for it.
    result = runner.invoke(app, common + ["--stem-padding", "1", "--head-activation", "relu"])
    assert result.exit_code == 1 and "different" in result.output
