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


def make_image_folder(images: Path, size: int = 12, per_class: int = 12) -> Path:
    """images/{train,test}/{ants,bees}/*.png: random pixels, the bees darker (seeded)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label, name in enumerate(("ants", "bees")):
            (images / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(size, size, 3)) // (1 + label)
                Image.fromarray(pixels.astype(np.uint8)).save(images / split / name / f"{i}.png")
    return images


def imagefolder_run(root: Path, images_per_class: int = 6, size: int = 12, trained_at: int = 8):
    """An imagefolder run of ReSA: :func:`make_image_folder` in root/images and root/runs/resa
    with one checkpoint (epoch 1, :func:`tiny_model` on RGB) and a config.yaml naming those
    images and ``trained_at`` as the image size. Returns (images, run folder, checkpoint path)."""
    from clusterprobe import save_checkpoint

    images = make_image_folder(root / "images", size=size, per_class=images_per_class)
    run = root / "runs" / "resa"
    path = save_checkpoint(run / "checkpoints" / "epoch_0001.pt", tiny_model(in_channels=3), epoch=1,
                           method="resa", dataset="imagefolder", run="resa")
    (run / "config.yaml").write_text(f"method: resa\ndataset: imagefolder\ndata_root: {images}\nimage_size: {trained_at}\n")
    return images, run, path


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


class SoloLearnVICReg(torch.nn.Module):
    """solo-learn's own module structure, built here from torchvision (not from clusterprobe):

    ``BaseMethod`` sets ``backbone = torchvision resnet18`` with ``fc = Identity`` and, for CIFAR,
    ``conv1 = Conv2d(3, 64, 3, stride=1, padding=2, bias=False)`` and ``maxpool = Identity``, plus
    a ``classifier = Linear(features_dim, num_classes)``; VICReg's projector is
    ``Sequential(Linear, BatchNorm1d, ReLU, Linear, BatchNorm1d, ReLU, Linear)``. Its
    ``state_dict()`` therefore has solo-learn's real key names (``backbone.layer1.0.conv1.weight``,
    ``projector.0.weight``, ``projector.1.running_mean``, ..., ``projector.6.bias``).
    """

    def __init__(self, hidden: int = 64, out: int = 32, num_classes: int = 10):
        import torchvision
        from torch import nn

        super().__init__()
        self.backbone = torchvision.models.resnet18()
        features_dim = self.backbone.inplanes
        self.backbone.fc = nn.Identity()
        self.backbone.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)
        self.backbone.maxpool = nn.Identity()
        self.classifier = nn.Linear(features_dim, num_classes)
        self.projector = nn.Sequential(
            nn.Linear(features_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, out),
        )

    def encode(self, x):
        return self.backbone(x)

    def project(self, h):
        return self.projector(h)

    def forward(self, x):
        return self.project(self.encode(x))


def solo_style_model(seed: int) -> SoloLearnVICReg:
    """A solo-learn VICReg network with non-trivial weights and BatchNorm statistics."""
    torch.manual_seed(seed)
    model = SoloLearnVICReg().train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, 3, 8, 8) * 2 + 0.5)
    return model.eval()


def solo_learn_state(online, momentum=None):
    """A Lightning ``state_dict`` as solo-learn saves it (``momentum_backbone.*`` and
    ``momentum_projector.*`` for a momentum branch, as ``BaseMomentumMethod`` names them)."""
    state = {key: value.clone() for key, value in online.state_dict().items()}
    if momentum is not None:
        state.update({f"momentum_{key}": value.clone() for key, value in momentum.state_dict().items()
                      if key.startswith(("backbone.", "projector."))})
    return state


@pytest.fixture
def solo_checkpoint(tmp_path):
    """A solo-learn CIFAR checkpoint (stem padding 2, momentum branch) with args.json beside it."""
    online, momentum = solo_style_model(2), solo_style_model(3)
    folder = tmp_path / "trained_models" / "vicreg" / "abc123"
    folder.mkdir(parents=True)
    path = folder / "vicreg-cifar10-abc123-ep=7.ckpt"
    # saved at the end of Lightning's 0-based epoch 7, i.e. after 8 epochs of 100 steps
    torch.save({"epoch": 7, "global_step": 800, "pytorch-lightning_version": "2.1.0",
                "state_dict": solo_learn_state(online, momentum)}, path)
    args = {"name": "vicreg-cifar10", "method": "vicreg", "backbone": {"name": "resnet18", "kwargs": {}},
            "method_kwargs": {"proj_hidden_dim": 64, "proj_output_dim": 32},
            "data": {"dataset": "cifar10", "train_path": "./datasets"}}
    (folder / "args.json").write_text(json.dumps(args))
    return path, online, momentum
