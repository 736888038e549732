"""Where a run's settings come from (method defaults < the saved run's config.yaml when resuming
< a config file < the fields given), decided once by the library: ``build_config`` and
``train(mapping, resume=...)`` resolve exactly what ``clusterprobe train`` does."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

import clusterprobe.trainer as train_package
from clusterprobe.errors import RunDirectoryError, TrainConfigError
from clusterprobe.trainer import TrainConfig, build_config, resolve_config, train

TINY = dict(method="resa", dataset="digits", epochs=2, batch_size=32, width=4, projector_dims=[32, 32, 16],
            limit_train=64, lr=0.5, progress=False)


def _cli():
    from cli.main import app

    return app


def cli_resolved(monkeypatch, args: list[str]) -> tuple[TrainConfig, dict]:
    """The config (and keyword arguments) ``clusterprobe train ARGS`` hands to the library's
    ``train``; nothing is trained."""
    seen = {}

    def fake_train(config, **kwargs):
        seen["config"], seen["kwargs"] = config, kwargs
        return Path(config.out)

    monkeypatch.setattr(train_package, "train", fake_train)
    result = CliRunner().invoke(_cli(), ["train", *args])
    assert result.exit_code == 0, result.output
    return seen["config"], seen["kwargs"]


def write_run(path: Path, **changes) -> Path:
    """A run directory holding only a saved (resolved) config.yaml."""
    from clusterprobe.trainer import save_config

    path.mkdir(parents=True)
    save_config(resolve_config({**TINY, "out": str(path), **changes}), path / "config.yaml")
    return path


# ---------------------------------------------------------------------------------------------
def test_given_fields_over_the_method_defaults():
    config = build_config({"method": "simclr", "dataset": "digits", "out": "runs/x", "batch-size": 64,
                           "options": {"temperature": 0.5}})
    assert config.batch_size == 64 and config.out == "runs/x"
    assert config.optimizer == "lars" and config.lr == 0.4 and config.projector_dims == [2048, 256]  # recipe
    assert config.options == {"temperature": 0.5}
    assert config == resolve_config(TrainConfig(method="simclr", dataset="digits", out="runs/x", batch_size=64,
                                                 options={"temperature": 0.5}))


def test_config_file_under_the_given_fields(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump({**TINY, "out": "runs/from_file", "seed": 3, "lr": 0.7,
                                    "options": {"temperature": 0.3, "sinkhorn_epsilon": 0.1}}))
    config = build_config({"seed": 5, "options": {"sinkhorn_iterations": 5}}, config_file=path)
    assert config.seed == 5 and config.lr == 0.7 and config.out == "runs/from_file"
    # options merge key by key: the file's two, the given one, the method's default for the rest
    assert config.options == {"temperature": 0.3, "sinkhorn_epsilon": 0.1, "sinkhorn_iterations": 5,
                              "transposed": False}


def test_resume_reads_the_saved_config_under_the_given_fields(tmp_path):
    run = write_run(tmp_path / "run", seed=7, options={"temperature": 0.3})
    config = build_config({"out": str(run), "log_every": 2, "options": {"transposed": True}}, resume=True)
    assert config.seed == 7 and config.width == 4 and config.limit_train == 64 and config.log_every == 2
    assert config.options == {"temperature": 0.3, "sinkhorn_epsilon": 0.05, "sinkhorn_iterations": 3,
                              "transposed": True}
    # without resume the saved run is not read: the method's defaults fill in
    fresh = build_config({"out": str(run)})
    assert fresh.seed == 0 and fresh.width == 64 and fresh.options["temperature"] == 0.4


def test_a_config_file_replaces_the_saved_config_when_resuming(tmp_path):
    run = write_run(tmp_path / "run", seed=7)
    path = tmp_path / "settings.toml"
    path.write_text(f'method = "resa"\ndataset = "digits"\nout = "{run}"\nepochs = 2\n')
    config = build_config({}, config_file=path, resume=True)
    assert config.seed == 0 and config.width == 64 and config.batch_size == 256


def test_missing_run_directory_is_refused(tmp_path):
    with pytest.raises(TrainConfigError, match=r"Resuming needs the run directory: --out runs/NAME"):
        build_config({"epochs": 3}, resume=True)
    with pytest.raises(TrainConfigError, match=r"Give the run directory: --out runs/NAME"):
        build_config({"method": "resa"})
    path = tmp_path / "no_out.yaml"
    path.write_text("method: resa\n")
    with pytest.raises(TrainConfigError, match=r"'out:' in the config file"):
        build_config(config_file=path)
    with pytest.raises(TrainConfigError, match="either a complete TrainConfig or a config file"):
        build_config(TrainConfig(out="x"), config_file=path)


def test_unreadable_saved_config(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("- not\n- a mapping\n")
    with pytest.raises(RunDirectoryError, match=r"Cannot resume from .*run: its config.yaml is unreadable"):
        build_config({"out": str(run)}, resume=True)


# ---------------------------------------------------------------------------------------------
# the command line resolves through the same function
def test_cli_and_library_resolve_the_same_fresh_config(tmp_path, monkeypatch):
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump({"method": "resa", "dataset": "digits", "epochs": 4,
                                    "options": {"temperature": 0.3}}))
    args = ["--config", str(path), "--out", str(tmp_path / "run"), "--width", "8", "--projector-dims",
            "64,64,32", "-o", "sinkhorn_iterations=5", "--crop-scale", "0.5,1.0", "--no-flip", "--quiet"]
    from_cli, kwargs = cli_resolved(monkeypatch, args)
    from_library = build_config({"out": str(tmp_path / "run"), "width": 8, "projector_dims": [64, 64, 32],
                                 "options": {"sinkhorn_iterations": 5}, "crop_scale": [0.5, 1.0],
                                 "flip": False, "progress": False}, config_file=path)
    assert from_cli == from_library
    assert from_cli.options["temperature"] == 0.3 and from_cli.options["sinkhorn_iterations"] == 5
    assert kwargs == {"resume": False, "overwrite": False}


def test_cli_and_library_resolve_the_same_resumed_config(tmp_path, monkeypatch):
    run = write_run(tmp_path / "run", seed=7, options={"temperature": 0.3})
    from_cli, kwargs = cli_resolved(monkeypatch, ["--out", str(run), "--resume", "--log-every", "2",
                                                  "-o", "transposed=true"])
    # the command shows progress unless --quiet, whatever the saved run had
    from_library = build_config({"out": str(run), "log_every": 2, "options": {"transposed": True},
                                 "progress": True}, resume=True)
    assert from_cli == from_library
    assert from_cli.seed == 7 and from_cli.options["temperature"] == 0.3 and from_cli.options["transposed"] is True
    assert kwargs == {"resume": True, "overwrite": False}


def test_library_and_cli_resume_the_same_run_identically(tmp_path):
    """An interrupted run resumed by ``train({"out": ...}, resume=True)`` and by
    ``clusterprobe train --out ... --resume``: the same config and bit-identical weights."""

    def stop_after_epoch_one(event, info):
        if event == "epoch" and info["epoch"] == 1:
            raise KeyboardInterrupt

    first = tmp_path / "first"
    with pytest.raises(KeyboardInterrupt):
        train({**TINY, "out": str(first)}, callbacks=[stop_after_epoch_one])
    assert sorted(p.name for p in (first / "checkpoints").iterdir()) == ["epoch_0000.pt", "epoch_0001.pt"]
    second = tmp_path / "second"
    shutil.copytree(first, second)

    train({"out": str(first), "log_every": 2}, resume=True)
    result = CliRunner().invoke(_cli(), ["train", "--out", str(second), "--log-every", "2", "--resume", "--quiet"])
    assert result.exit_code == 0, result.output

    a = yaml.safe_load((first / "config.yaml").read_text())
    b = yaml.safe_load((second / "config.yaml").read_text())
    assert {**a, "out": None} == {**b, "out": None}
    ours = torch.load(first / "checkpoints" / "epoch_0002.pt", weights_only=True)
    theirs = torch.load(second / "checkpoints" / "epoch_0002.pt", weights_only=True)
    assert ours["step"] == theirs["step"] == 4
    for key in ("state_dict", "momentum_state_dict"):
        assert ours[key].keys() == theirs[key].keys()
        for name in ours[key]:
            assert torch.equal(ours[key][name], theirs[key][name]), (key, name)


def test_resume_refuses_changed_training_fields_from_both(tmp_path):
    run = write_run(tmp_path / "run")
    shutil.copy(run / "config.yaml", tmp_path / "saved.yaml")
    (run / "checkpoints").mkdir()
    with pytest.raises(RunDirectoryError, match=r"these fields differ \(saved -> now\): seed: 0 -> 5"):
        train({"out": str(run), "seed": 5}, resume=True)
    result = CliRunner().invoke(_cli(), ["train", "--out", str(run), "--epochs", "1", "--resume", "--quiet"])
    assert result.exit_code == 1 and "epochs: 2 -> 1 (a run can be extended to more epochs, not shortened" in result.output
    # a complete TrainConfig is compared as it is: every default that differs is refused
    with pytest.raises(RunDirectoryError, match=r"width: 4 -> 64"):
        train(TrainConfig(method="resa", dataset="digits", out=str(run), epochs=2), resume=True)
    assert (run / "config.yaml").read_text() == (tmp_path / "saved.yaml").read_text()


# ---------------------------------------------------------------------------------------------
# the building blocks refuse bad names with the project's error class
def test_building_blocks_raise_train_config_errors():
    from clusterprobe.trainer.optim import build_optimizer
    from clusterprobe.trainer.views import two_view_transform

    with pytest.raises(TrainConfigError, match=r"Unknown optimizer 'adam'; use one of sgd, lars\."):
        build_optimizer("adam", [torch.nn.Parameter(torch.zeros(2))], 0.1, 0.0)
    with pytest.raises(TrainConfigError, match=r"Unknown view recipe 'strong'; use one of resa, asymmetric"):
        two_view_transform("strong", 32, (0.5,), (0.5,))
    assert issubclass(TrainConfigError, ValueError)


def test_a_warm_up_longer_than_the_run_is_refused_by_the_cli(tmp_path, monkeypatch):
    """Issue 9: `--warmup-epochs 5 --epochs 1` was accepted silently (the LR never reached its peak)."""
    monkeypatch.setattr(train_package, "train", lambda *a, **k: pytest.fail("must be refused before training"))
    result = CliRunner().invoke(_cli(), ["train", "--method", "resa", "--dataset", "digits", "--epochs", "1",
                                         "--warmup-epochs", "5", "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert ("warmup_epochs 5 is longer than the run (1 epochs): the learning rate would never reach its peak. "
            "Use fewer warm-up epochs or more epochs.") in text
    assert not (tmp_path / "run").exists()
    # as long as the run is fine; the automatic default stays min(method default, epochs / 10)
    assert build_config({**TINY, "epochs": 1, "warmup_epochs": 1, "out": str(tmp_path / "a")}).warmup_epochs == 1
    assert build_config({**TINY, "epochs": 5, "out": str(tmp_path / "b")}).warmup_epochs == 0.5  # resa: 2
    assert build_config({**TINY, "epochs": 100, "out": str(tmp_path / "c")}).warmup_epochs == 2.0
    assert build_config({"method": "byol", "dataset": "digits", "epochs": 1000, "out": str(tmp_path / "d")}).warmup_epochs == 10.0


def test_cifar_stems_default_to_padding_2_and_earlier_runs_keep_their_padding_1(tmp_path):
    # ../shared/docs/resa.md: the ReSA reference network's effective stem padding is 2 (a 1-pixel
    # pad before a padding-1 conv), as in solo-learn. Runs written by earlier versions saved 1.
    assert build_config({"out": str(tmp_path / "new")}).stem_padding == 2
    for name in ("resa_cifar10.yaml", "resa_cifar100.yaml"):
        assert yaml.safe_load((Path(__file__).parents[1] / "configs" / name).read_text())["stem_padding"] == 2
    old = write_run(tmp_path / "old", stem_padding=1)
    assert build_config({"out": str(old), "epochs": 4}, resume=True).stem_padding == 1


def test_a_finished_run_extends_to_more_epochs_with_its_schedules_recomputed(tmp_path):
    from clusterprobe.trainer.schedules import WarmupCosineSchedule

    run = tmp_path / "run"
    train({**TINY, "out": str(run), "log_every": 1})
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    assert sorted(before) == ["epoch_0000.pt", "epoch_0001.pt", "epoch_0002.pt"]

    result = CliRunner().invoke(_cli(), ["train", "--out", str(run), "--epochs", "3", "--resume"])
    assert result.exit_code == 0, result.output
    assert "extending the run from 2 to 3 epochs" in result.output
    assert yaml.safe_load((run / "config.yaml").read_text())["epochs"] == 3
    after = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    assert {name: after[name] for name in before} == before  # earlier epochs untouched
    final = torch.load(run / "checkpoints" / "epoch_0003.pt", weights_only=True)
    assert (final["epoch"], final["step"]) == (3, 6)  # 64 images / batch 32 = 2 steps per epoch

    # The learning rate of the added steps follows the schedule over 3 epochs (6 steps).
    config = build_config({"out": str(run)}, resume=True)
    schedule = WarmupCosineSchedule(config.scaled_lr(), 6, round(config.warmup_epochs * 2),
                                    config.scaled_lr() * config.lr_floor)
    import csv

    rows = list(csv.DictReader((run / "log.csv").open()))
    logged = {int(r["step"]): float(r["lr"]) for r in rows}
    assert len(logged) == 6
    for step in (5, 6):
        assert logged[step] == pytest.approx(schedule(step - 1), rel=1e-5), (step, logged)  # CSV: 6 digits


def test_new_runs_record_the_3sigma_blur_kernel_and_earlier_runs_read_as_10percent(tmp_path):
    """The blur kernel rule is part of the recorded config (it changes the views of SimCLR, SwAV and
    ReSA's blur=True): new runs save ``blur_kernel: 3sigma``; a config.yaml of an earlier version
    (no ``blur_kernel``) was trained with the 3-tap '10percent' rule and resumes with it."""
    new = write_run(tmp_path / "new", method="simclr")
    assert yaml.safe_load((new / "config.yaml").read_text())["blur_kernel"] == "3sigma"
    assert build_config({"out": str(new), "epochs": 4}, resume=True).blur_kernel == "3sigma"
    old = write_run(tmp_path / "old", method="simclr")
    saved = yaml.safe_load((old / "config.yaml").read_text())
    del saved["blur_kernel"]
    (old / "config.yaml").write_text(yaml.safe_dump(saved))
    assert build_config({"out": str(old), "epochs": 4}, resume=True).blur_kernel == "10percent"
    assert train_package.load_saved_config(old).blur_kernel == "10percent"
    # a config file for a new run is not a saved run: its missing field is today's default
    assert build_config({"out": str(tmp_path / "fresh")}, config_file=old / "config.yaml").blur_kernel == "3sigma"
    with pytest.raises(TrainConfigError, match=r"blur_kernel must be one of 3sigma, 10percent .*got '5sigma'"):
        resolve_config({**TINY, "out": "x", "blur_kernel": "5sigma"})


def test_resuming_an_earlier_run_with_another_blur_kernel_is_refused_with_the_reason(tmp_path):
    old = write_run(tmp_path / "old", method="simclr")
    saved = yaml.safe_load((old / "config.yaml").read_text())
    del saved["blur_kernel"]
    (old / "config.yaml").write_text(yaml.safe_dump(saved))
    (old / "checkpoints").mkdir()
    with pytest.raises(RunDirectoryError, match=r"blur_kernel: '10percent' -> '3sigma' \(the rule for the Gaussian "
                       r"blur's kernel size the run was trained with; its config.yaml predates the field"):
        train({"out": str(old), "blur_kernel": "3sigma"}, resume=True)


def test_a_relative_data_root_is_recorded_as_the_folder_trained_on(tmp_path, monkeypatch):
    """config.yaml names the data folder absolutely: a relative 'data' would be read again from
    the folder a later extract/report runs in (another data set there would be measured as this one)."""
    from clusterprobe.trainer.config import build_config, load_saved_config, save_config
    from clusterprobe.runs import RunLayout

    monkeypatch.chdir(tmp_path)
    config = build_config({"out": "runs/x", "dataset": "cifar10", "data_root": "data"})
    assert config.data_root == str(tmp_path / "data")
    save_config(config, tmp_path / "runs" / "x" / "config.yaml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_saved_config(RunLayout(tmp_path / "runs" / "x")).data_root == str(tmp_path / "data")
    assert build_config({"out": "runs/y"}).data_root is None  # digits: no folder


def test_residual_branches_start_at_zero_as_the_resa_reference_code_builds_them(tmp_path):
    """winci-ai/resa_cifar: zero_init_residual=(arch != 'resnet18') with the CIFAR stem; winci-ai/resa
    (ImageNet): always. Baselines keep torchvision's default (off). config.yaml records the choice."""
    from clusterprobe.models.backbones import ResNetBackbone
    from clusterprobe.trainer import build_method
    from clusterprobe.trainer.config import load_saved_config
    from clusterprobe.runs import RunLayout

    def last_gammas(method, cifar=True, **fields):
        heads = dict(projector_dims=[16, 8], predictor_dims=[16, 8]) if method == "byol" else dict(projector_dims=[16, 16, 8])
        config = resolve_config(TrainConfig(method=method, out=str(tmp_path / "x"), width=4, **heads, **fields))
        built = build_method(config, 3, cifar, 10, 5)
        backbone = built.online.model.backbone
        gammas = [b.bn3.weight if hasattr(b, "bn3") else b.bn2.weight for b in backbone.modules()
                  if type(b).__name__ in ("BasicBlock", "Bottleneck")]
        return built, torch.stack([g.abs().max() for g in gammas])

    for method, backbone, cifar, zero in (("resa", "resnet18", True, False), ("resa", "resnet50", True, True),
                                          ("resa", "resnet18", False, True), ("byol", "resnet50", True, False)):
        built, gammas = last_gammas(method, backbone=backbone, cifar=cifar)
        assert built.zero_init_residual is zero and bool((gammas == 0).all()) is zero, (method, backbone, cifar)
        if built.momentum is not None:  # the momentum copy starts equal to the online network
            for a, b in zip(built.momentum.backbone.parameters(), built.online.model.backbone.parameters()):
                assert torch.equal(a, b)
    built, gammas = last_gammas("byol", backbone="resnet18", zero_init_residual=True)
    assert built.zero_init_residual and bool((gammas == 0).all())
    run = train(TrainConfig(method="resa", dataset="digits", epochs=1, batch_size=32, width=4, limit_train=64,
                            projector_dims=[16, 16, 8], out=str(tmp_path / "run"), progress=False))
    assert load_saved_config(RunLayout(run)).zero_init_residual is False  # resnet18, CIFAR stem (8 px digits)
