"""``clusterprobe demo``: which runs it trains, reuses or refuses (training and the report are
stubbed in the fast tests; the slow one runs the real pipeline for one epoch)."""

from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

import clusterprobe.demo as demo_module
import clusterprobe.trainer as trainer_module
from cli.main import app

runner = CliRunner()


@pytest.fixture
def stubs(monkeypatch, tmp_path):
    """Record train() calls (each writes the run's config and final checkpoint) and report()."""
    calls = {"train": [], "report": []}

    def train(config, resume=False, overwrite=False):
        calls["train"].append((config["method"], config["epochs"], config["device"], resume, overwrite))
        run = tmp_path / "demo" / "runs" / config["method"]
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run / "config.yaml").write_text(yaml.safe_dump({"method": config["method"], "epochs": config["epochs"]}))
        (run / "checkpoints" / f"epoch_{config['epochs']:04d}.pt").write_bytes(b"")
        return run

    def report(runs, out, settings, progress=True):
        calls["report"].append((runs, out, settings.device))
        return SimpleNamespace(warnings=[], metrics_csv=out / "metrics.csv", index_html=out / "index.html")

    monkeypatch.setattr(trainer_module, "train", train)
    monkeypatch.setattr(demo_module, "build_report", report)
    return calls


def _saved_run(root, method, epochs, checkpoints):
    (root / "runs" / method / "checkpoints").mkdir(parents=True)
    (root / "runs" / method / "config.yaml").write_text(yaml.safe_dump({"method": method, "epochs": epochs}))
    for epoch in checkpoints:
        (root / "runs" / method / "checkpoints" / f"epoch_{epoch:04d}.pt").write_bytes(b"")


def test_runs_of_more_epochs_than_asked_are_refused_not_reported(stubs, tmp_path):
    """--epochs 3 after a 6-epoch demo skipped training (epoch_0003.pt existed) and reported the
    6-epoch runs as the demo's."""
    out = tmp_path / "demo"
    _saved_run(out, "resa", 6, range(7))
    _saved_run(out, "byol", 6, range(7))
    result = runner.invoke(app, ["demo", "--out", str(out), "--epochs", "3"])
    assert result.exit_code == 1 and "holds a 6-epoch demo run" in result.output and "--epochs 6" in result.output
    assert stubs == {"train": [], "report": []}
    # the same number of epochs reuses them; more extends them (resume)
    assert runner.invoke(app, ["demo", "--out", str(out), "--epochs", "6"]).exit_code == 0
    assert stubs["train"] == [] and len(stubs["report"]) == 1
    assert runner.invoke(app, ["demo", "--out", str(out), "--epochs", "8", "--device", "cpu"]).exit_code == 0
    assert stubs["train"] == [("resa", 8, "cpu", True, False), ("byol", 8, "cpu", True, False)]
    assert stubs["report"][-1] == (out / "runs", out / "report", "cpu")


def test_a_run_stopped_before_its_first_checkpoint_is_started_again(stubs, tmp_path):
    """A config.yaml without checkpoints was resumed: the trainer refused ("no checkpoint yet.
    Start it again with --overwrite", an option the demo does not have)."""
    out = tmp_path / "demo"
    _saved_run(out, "resa", 2, [])
    result = runner.invoke(app, ["demo", "--out", str(out), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    assert stubs["train"] == [("resa", 2, "auto", False, True), ("byol", 2, "auto", False, False)]
    assert runner.invoke(app, ["demo", "--out", str(out), "--epochs", "0"]).exit_code == 2


@pytest.mark.slow
def test_the_demo_trains_both_methods_and_reports_every_epoch(tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), "--epochs", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "report" / "metrics.csv")
    for method in ("resa", "byol"):
        assert sorted((out / "runs" / method / "checkpoints").iterdir()) == [
            out / "runs" / method / "checkpoints" / f"epoch_{e:04d}.pt" for e in (0, 1)]
        rows = table[table["run"] == method]
        assert sorted(rows["epoch"].unique()) == [0, 1] and set(rows["layer"]) == {"H", "P0", "P1", "Z"}
    assert (out / "report" / "index.html").stat().st_size > 10_000
