import json

import pytest
import torch

from clusterprobe.errors import ClusterprobeError
from clusterprobe.report.discovery import discover_runs


def touch_checkpoint(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"x": torch.zeros(1)}, path)


def test_own_and_solo_learn_runs_sorted_by_parsed_epoch(tmp_path):
    for epoch in (10, 2, 1, 100):
        touch_checkpoint(tmp_path / "resa" / "checkpoints" / f"epoch_{epoch:04d}.pt")
    (tmp_path / "resa" / "config.yaml").write_text("method: resa\ndataset: digits\n")
    solo = tmp_path / "solo" / "byol" / "v1"
    for epoch in (0, 9, 10, 99):
        touch_checkpoint(solo / f"byol-cifar10-v1-ep={epoch}.ckpt")
    (solo / "args.json").write_text(json.dumps({"method": "byol", "backbone": {"name": "resnet18"},
                                                 "data": {"dataset": "cifar10"}}))
    runs, warnings = discover_runs(tmp_path)
    assert [r.name for r in runs] == ["resa", "solo-byol-v1"] and warnings == []
    resa, byol = runs
    assert resa.epochs == [1, 2, 10, 100] and resa.method == "resa" and resa.dataset == "digits"
    # solo-learn names a file by Lightning's 0-based index of the epoch just finished: ep=0 holds
    # one epoch of training (not the initialisation), ep=99 the hundredth
    assert byol.epochs == [1, 10, 11, 100] and byol.kind == "solo-learn" and byol.dataset == "cifar10"
    assert byol.checkpoints[100].name == "byol-cifar10-v1-ep=99.ckpt"
    assert byol.checkpoints[1].name == "byol-cifar10-v1-ep=0.ckpt" and 0 not in byol.checkpoints


def test_runs_without_checkpoints_are_reported_and_skipped(tmp_path):
    touch_checkpoint(tmp_path / "good" / "checkpoints" / "epoch_0001.pt")
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    runs, warnings = discover_runs(tmp_path)
    assert [r.name for r in runs] == ["good"]
    assert len(warnings) == 1 and "empty" in warnings[0] and "no checkpoints" in warnings[0]


def test_empty_or_missing_runs_folder(tmp_path):
    with pytest.raises(ClusterprobeError, match="No runs found"):
        discover_runs(tmp_path)
    with pytest.raises(ClusterprobeError, match="does not exist"):
        discover_runs(tmp_path / "nope")


def test_a_run_without_its_checkpoints_folder_is_named(tmp_path):
    """Issue 9: a run folder holding config.yaml but no checkpoints/ vanished without a word."""
    touch_checkpoint(tmp_path / "good" / "checkpoints" / "epoch_0001.pt")
    (tmp_path / "good" / "config.yaml").write_text("method: resa\ndataset: digits\n")
    (tmp_path / "lost").mkdir()
    (tmp_path / "lost" / "config.yaml").write_text("method: byol\ndataset: digits\n")
    runs, warnings = discover_runs(tmp_path)
    assert [r.name for r in runs] == ["good"]
    assert warnings == [f"run lost ({tmp_path / 'lost'}) has a config.yaml but no checkpoints/ folder: skipped"]


def test_a_checkpoint_file_instead_of_a_folder(tmp_path):
    touch_checkpoint(tmp_path / "run" / "checkpoints" / "epoch_0001.pt")
    with pytest.raises(ClusterprobeError, match="is a file; the report takes a folder of runs"):
        discover_runs(tmp_path / "run" / "checkpoints" / "epoch_0001.pt")
