"""Shared fixtures: small real data, tiny models and checkpoints in the formats we read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def cifar10_root() -> Path | None:
    """CIFAR-10 in ImageFolder layout: $CLUSTERPROBE_CIFAR10, else ../shared/data/cifar10."""
    candidates = [os.environ.get("CLUSTERPROBE_CIFAR10"), REPO.parent / "shared" / "data" / "cifar10"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "test").is_dir():
            return Path(candidate)
    return None


@pytest.fixture
def cifar10():
    root = cifar10_root()
    if root is None:
        pytest.skip("CIFAR-10 images not found (set CLUSTERPROBE_CIFAR10 to an ImageFolder copy)")
    return root


def tiny_model(in_channels: int = 1, seed: int = 0, cifar_stem: bool = True, stem_padding: int = 1,
               projector=(64, 64, 32), predictor=None):
    """A narrow ResNet-18 whose BatchNorm buffers are not at their initial values."""
    from clusterprobe import build_model

    torch.manual_seed(seed)
    model = build_model("resnet18", width=8, in_channels=in_channels, cifar_stem=cifar_stem,
                        stem_padding=stem_padding, projector_dims=projector, predictor_dims=predictor)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, in_channels, 8, 8) * 2 + 0.5)
    return model.eval()


@pytest.fixture
def model():
    return tiny_model()


@pytest.fixture
def own_checkpoint(tmp_path, model):
    from clusterprobe import save_checkpoint

    momentum = tiny_model(seed=1)
    path = tmp_path / "run" / "checkpoints" / "epoch_0003.pt"
    save_checkpoint(path, model, epoch=3, step=30, method="resa", momentum_model=momentum,
                    dataset="digits", run="run")
    return path, model, momentum


def solo_learn_state(online, momentum=None):
    """A solo-learn-style Lightning state dict built from our models' weights."""
    state = {}
    for prefix, source in (("", online), ("momentum_", momentum)):
        if source is None:
            continue
        for key, value in source.state_dict().items():
            if key.startswith(("backbone.", "projector.")):
                state[prefix + key] = value.clone()
    state["classifier.weight"] = torch.randn(10, online.feature_dim)
    state["classifier.bias"] = torch.zeros(10)
    return state


def solo_style_model(seed: int):
    """solo-learn's VICReg/Barlow projector layout: Linear(+bias)-BN-ReLU x2, then Linear(+bias)."""
    from clusterprobe.models import ModelConfig, SSLModel, mlp_description

    torch.manual_seed(seed)
    config = ModelConfig("resnet18", width=8, cifar_stem=True, stem_padding=2, in_channels=3,
                         projector=mlp_description([64, 64, 64, 32], bias=True))
    model = SSLModel(config).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, 3, 8, 8) * 2 + 0.5)
    return model.eval()


@pytest.fixture
def solo_checkpoint(tmp_path):
    """A solo-learn CIFAR checkpoint (stem padding 2, momentum branch) with args.json beside it."""
    online, momentum = solo_style_model(2), solo_style_model(3)
    folder = tmp_path / "trained_models" / "vicreg" / "abc123"
    folder.mkdir(parents=True)
    path = folder / "vicreg-cifar10-abc123-ep=7.ckpt"
    torch.save({"epoch": 7, "global_step": 700, "pytorch-lightning_version": "2.1.0",
                "state_dict": solo_learn_state(online, momentum)}, path)
    args = {"name": "vicreg-cifar10", "method": "vicreg", "backbone": {"name": "resnet18", "kwargs": {}},
            "method_kwargs": {"proj_hidden_dim": 64, "proj_output_dim": 32},
            "data": {"dataset": "cifar10", "train_path": "./datasets"}}
    (folder / "args.json").write_text(json.dumps(args))
    return path, online, momentum
