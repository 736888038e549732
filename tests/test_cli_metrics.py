"""``clusterprobe metrics`` on banks made by ``clusterprobe extract``."""

from __future__ import annotations

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from cli import metrics as metrics_command

runner = CliRunner()
WIDE = {"COLUMNS": "200"}


@pytest.fixture
def app():
    app = typer.Typer()
    metrics_command.register(app)

    @app.callback()
    def _root():  # keeps `metrics` a sub-command, as in cli/main.py
        pass

    return app


@pytest.fixture(scope="module")
def extracted_run(tmp_path_factory):
    """A run directory with train and test banks of the digits set, written by `clusterprobe extract`."""
    from conftest import tiny_model

    from cli.main import app as main_app
    from clusterprobe import save_checkpoint
    from clusterprobe.metrics._device import threads_for

    path = tmp_path_factory.mktemp("cli-metrics") / "run" / "checkpoints" / "epoch_0003.pt"
    with threads_for(0):  # tiny models: one thread avoids OpenMP contention on a busy machine
        save_checkpoint(path, tiny_model(), epoch=3, step=30, method="resa", momentum_model=tiny_model(seed=1),
                        dataset="digits", run="run")
        for split in ("train", "test"):
            result = runner.invoke(main_app, ["extract", str(path), "--layers", "H,Z", "--dataset", "digits",
                                              "--split", split])
            assert result.exit_code == 0, result.output
    return path.parent.parent


def test_metrics_on_an_extracted_run_prints_tables_and_writes_the_cache(app, extracted_run, tmp_path):
    out = tmp_path / "table.csv"
    (extracted_run / "metrics.csv").unlink(missing_ok=True)
    result = runner.invoke(app, ["metrics", str(extracted_run), "--metrics", "nmi,ari,silhouette,linear,knn", "--output", str(out)], env=WIDE)
    assert result.exit_code == 0, result.output
    for text in ("run · resa · epoch 3 · train", "epoch 3 · test", "NMI", "ARI", "sil(y)", "sil(km) sd",
                 "linear@1", "kNN@1", "probes: train->test", "k = number of classes"):
        assert text in result.output, text
    cache = extracted_run / "metrics.csv"
    assert f"cached in {cache}" in result.output.replace("\n", "")
    table = pd.read_csv(out)
    assert set(table.layer) == {"H", "Z"} and set(table.split) == {"train", "test"}
    assert len(pd.read_csv(cache)) == len(table)
    # asking again is answered from the cache, with the same numbers
    again = runner.invoke(app, ["metrics", str(extracted_run), "--metrics", "nmi,ari,silhouette,linear,knn", "--output", str(out)], env=WIDE)
    assert again.exit_code == 0 and again.output == result.output
    pd.testing.assert_frame_equal(pd.read_csv(out), table)


def test_metrics_options_reach_the_library(app, extracted_run, tmp_path):
    bank = extracted_run / "features" / "test" / "epoch_0003"
    out = tmp_path / "t.parquet"
    result = runner.invoke(app, ["metrics", str(bank), "-m", "nmi,silhouette", "--k", "4", "--seeds", "0,7",
                                 "--distance", "euclidean", "--raw", "-l", "Z", "--no-cache", "-o", str(out)], env=WIDE)
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(out)
    assert set(table.layer) == {"Z"} and set(table.k.dropna()) == {4} and set(table.seeds) - {""} == {"0,7"}
    assert set(table[table.metric == "silhouette_true"].distance) == {"euclidean"}
    assert not (bank.parent / "epoch_0003.metrics.csv").exists()  # --no-cache


def test_metrics_errors_are_one_clean_paragraph(app, extracted_run, tmp_path):
    result = runner.invoke(app, ["metrics", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "does not exist" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["metrics", str(extracted_run), "--distance", "manhattan"])
    assert result.exit_code == 1 and "distance must be 'cosine' or 'euclidean'" in result.output
    result = runner.invoke(app, ["metrics", str(extracted_run), "--k", "100000", "-m", "nmi"])
    assert result.exit_code == 1 and "larger than the number of samples" in result.output
    result = runner.invoke(app, ["metrics", str(extracted_run), "-m", "nmj"])
    assert result.exit_code == 1 and "Did you mean 'nmi'" in result.output
    result = runner.invoke(app, ["metrics", str(extracted_run), "-m", "acc"])  # one name per metric
    assert result.exit_code == 1 and "Did you mean 'cluster_acc'" in result.output


def test_metrics_help_lists_the_metric_names(app):
    from clusterprobe.metrics import METRIC_NAMES

    result = runner.invoke(app, ["metrics", "--help"], env=WIDE)
    text = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 0
    for name in METRIC_NAMES:
        assert name in text, name
    import re

    words = set(re.findall(r"[a-z_]+", text.split("--metrics")[1].split("--k")[0]))
    assert not words & {"acc", "db", "ch", "probe", "accuracy"}  # the former second names


def test_a_bank_without_an_epoch_prints_its_table(app, tmp_path):
    """A bank written by FeatureBank.write with no epoch (pandas NA in the table) used to crash."""
    import numpy as np

    from clusterprobe import FeatureBank

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    X = (rng.normal(size=(300, 8)) + 3 * y[:, None]).astype("float32")
    FeatureBank.write(tmp_path / "bank", features={"H": X}, labels=y)
    result = runner.invoke(app, ["metrics", str(tmp_path / "bank"), "--metrics", "nmi,linear"])
    assert result.exit_code == 0, result.output
    assert "NMI" in result.output and "linear@1" in result.output
    table = pd.read_csv(tmp_path / "bank.metrics.csv")
    assert table["epoch"].isna().all() and set(table["metric"]) == {"nmi", "linear_top1"}


def test_a_read_only_bank_says_it_could_not_cache(app, tmp_path, monkeypatch):
    """Issue 9: on a read-only bank, metrics printed 'cached in ...' though nothing was written."""
    import errno
    import os

    import numpy as np

    from clusterprobe import FeatureBank
    from clusterprobe.metrics import evaluate

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    X = (rng.normal(size=(300, 8)) + 3 * y[:, None]).astype("float32")
    folder = tmp_path / "readonly"
    FeatureBank.write(folder / "bank", features={"H": X}, labels=y, meta={"epoch": 2})
    real_open = os.open

    def read_only_open(path, flags, *args, **kwargs):  # the tests run as root: chmod would not stop it
        if str(path).startswith(str(folder)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_open)
    cache = folder / "bank.metrics.csv"
    result = runner.invoke(app, ["metrics", str(folder / "bank"), "--metrics", "nmi"], env=WIDE)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "cached in" not in text and "NMI" in text
    assert f"not cached: {cache} could not be written (Read-only file system)" in text
    assert "--no-cache" in text and "Could not write the metrics cache" not in text  # said once, by the command
    assert not cache.exists()
    # the library records it too, and warns
    with pytest.warns(UserWarning, match="Could not write the metrics cache"):
        frame = evaluate(folder / "bank", metrics="nmi")
    assert frame.attrs["cache_error"] == f"{cache} could not be written (Read-only file system)"
    monkeypatch.undo()
    frame = evaluate(folder / "bank", metrics="nmi")
    assert frame.attrs["cache_error"] is None and frame.attrs["cache"] == str(cache) and cache.exists()
    assert set(pd.read_csv(cache)["metric"]) == {"nmi"}


def test_cache_save_returns_whether_it_wrote(tmp_path):
    from clusterprobe.metrics.cache import MetricsCache

    assert MetricsCache(None).save() is False
    cache = MetricsCache(tmp_path / "m.csv")
    assert cache.save() is False and not (tmp_path / "m.csv").exists()  # nothing new


def test_numbers_that_are_not_numbers_are_a_usage_error_not_a_traceback(app, extracted_run, tmp_path):
    """--seeds a and --epochs 1-3 (metrics, report) ended in Python's ValueError traceback."""
    from cli.main import app as main_app

    for args, flag in ((["--seeds", "a"], "--seeds"), (["--epochs", "1-3"], "--epochs")):
        result = runner.invoke(app, ["metrics", str(extracted_run), "--no-cache", *args], env=WIDE)
        assert result.exit_code == 2 and f"{flag} takes whole numbers" in result.output, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
    result = runner.invoke(main_app, ["report", str(tmp_path), "--epochs", "0,last"], env=WIDE)
    assert result.exit_code == 2 and "--epochs takes whole numbers" in result.output and "'0,last'" in result.output
    # well-formed lists still reach the library
    result = runner.invoke(app, ["metrics", str(extracted_run), "--no-cache", "--metrics", "nmi", "--layers", "H",
                                 "--splits", "test", "--epochs", "3", "--seeds", "4,7"], env=WIDE)
    assert result.exit_code == 0 and "k-means seeds 4,7" in result.output, result.output


def test_an_output_file_of_another_format_is_refused_before_the_work(app, extracted_run, tmp_path, monkeypatch):
    """-o table.json (or .xlsx, .tsv) was written as CSV text under that name, silently."""
    import clusterprobe.metrics as metrics_module

    def forbidden(*args, **kwargs):
        raise AssertionError("computed before the option was checked")

    monkeypatch.setattr(metrics_module, "evaluate", forbidden)
    result = runner.invoke(app, ["metrics", str(extracted_run), "--no-cache", "-o", str(tmp_path / "table.json")], env=WIDE)
    assert result.exit_code == 2 and "--output writes a .csv or .parquet file" in result.output, result.output
    assert not (tmp_path / "table.json").exists()
    monkeypatch.undo()
    result = runner.invoke(app, ["metrics", str(extracted_run), "--no-cache", "--metrics", "nmi", "--layers", "H",
                                 "-o", str(tmp_path / "table.PARQUET")], env=WIDE)
    assert result.exit_code == 0, result.output
    assert set(pd.read_parquet(tmp_path / "table.PARQUET")["metric"]) == {"nmi"}


def test_messages_with_square_brackets_are_printed_as_they_are(app, extracted_run, tmp_path):
    """Messages went through rich markup: 'runs/[baseline]/x' was printed as 'runs//x' (a wrong
    path), '[min, max]' vanished, and '[/x]' ended in a MarkupError traceback."""
    from cli.main import app as main_app

    for name in ("[baseline]", "[/x]"):
        result = runner.invoke(app, ["metrics", str(tmp_path / "runs" / name / "bank")], env=WIDE)
        assert result.exit_code == 1 and f"runs/{name}/bank does not exist" in result.output, result.output
    result = runner.invoke(main_app, ["train", "--dataset", "digits", "--crop-scale", "0.2", "--out", str(tmp_path / "r")],
                           env=WIDE)
    assert result.exit_code == 1 and "crop_scale must be [min, max] with" in result.output, result.output
    # paths printed after the work keep their brackets too
    (tmp_path / "[b]").mkdir()
    result = runner.invoke(app, ["metrics", str(extracted_run / "features" / "test" / "epoch_0003"), "--metrics", "nmi",
                                 "--layers", "H", "--no-cache", "-o", str(tmp_path / "[b]" / "t.csv")], env=WIDE)
    assert result.exit_code == 0 and f"wrote {tmp_path / '[b]' / 't.csv'}" in result.output, result.output


def test_a_run_name_with_square_brackets_reaches_the_table(app, extracted_run, tmp_path):
    """The progress line and the table title rendered the run's name as markup: a run named
    '[/x]' (train --name, or its folder) ended in a MarkupError traceback mid-computation."""
    import json
    import shutil

    bank = tmp_path / "bank"
    shutil.copytree(extracted_run / "features" / "test" / "epoch_0003", bank)
    meta = json.loads((bank / "meta.json").read_text())
    meta["checkpoint"]["run"] = "[/x]"
    (bank / "meta.json").write_text(json.dumps(meta))
    result = runner.invoke(app, ["metrics", str(bank), "--metrics", "nmi", "--layers", "H", "--no-cache"], env=WIDE)
    assert result.exit_code == 0 and "[/x] · resa · epoch 3 · test" in " ".join(result.output.split()), result.output
