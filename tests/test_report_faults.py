"""Issue 9: `clusterprobe report` on runs it cannot fully analyse says what happened, in its own terms."""

from __future__ import annotations

import argparse
import pickle
import re

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import app
from clusterprobe import save_checkpoint

from conftest import tiny_model

runner = CliRunner()
FAST = ["--no-umap", "--seeds", "2", "--layers", "H"]


def make_run(folder, epochs, seed=0):
    for epoch in epochs:
        save_checkpoint(folder / "checkpoints" / f"epoch_{epoch:04d}.pt", tiny_model(seed=seed + epoch),
                        epoch=epoch, method="resa", dataset="digits", run=folder.name)
    (folder / "config.yaml").write_text("method: resa\ndataset: digits\n")


def output(result) -> str:
    return " ".join(result.output.split())  # undo the console's line wrapping


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    make_run(root / "good", [0, 1])
    make_run(root / "bad", [0, 1], seed=5)
    (root / "bad" / "checkpoints" / "epoch_0001.pt").write_bytes(b"PK\x03\x04 truncated")
    with open(root / "bad" / "checkpoints" / "epoch_0000.pt", "wb") as handle:  # a raw pickle
        pickle.dump({"state_dict": {}, "args": argparse.Namespace(lr=0.1)}, handle, protocol=4)
    return root


def test_only_the_requested_epochs_failed(runs, tmp_path):
    result = runner.invoke(app, ["report", str(runs), "--out", str(tmp_path / "r1"), "--epochs", "1", *FAST])
    assert result.exit_code == 0, result.output
    text = output(result)
    assert "run bad skipped: the requested epochs 1 could not be analysed (epochs 1 of this run failed, " \
           "reasons above; it has epochs 0, 1)" in text
    assert "none of its checkpoints could be read" not in text
    assert f"run bad, epoch 1 skipped: {runs / 'bad' / 'checkpoints' / 'epoch_0001.pt'} is truncated or corrupt" in text


def test_a_requested_epoch_the_run_does_not_have(runs, tmp_path):
    result = runner.invoke(app, ["report", str(runs / "good"), "--out", str(tmp_path / "r2"), "--epochs", "5", *FAST])
    assert result.exit_code == 1
    assert "run good skipped: it has none of the requested epochs (5); its epochs are 0, 1" in output(result)


def test_report_never_suggests_trust_or_overwrite_for_itself(runs, tmp_path):
    result = runner.invoke(app, ["report", str(runs), "--out", str(tmp_path / "r3"), *FAST])
    assert result.exit_code == 0, result.output
    text = output(result)
    raw = runs / "bad" / "checkpoints" / "epoch_0000.pt"
    assert (f"run bad, epoch 0 skipped: {raw} stores Python objects beyond tensors, and unpickling them can "
            "run arbitrary code; the report reads checkpoints only in the safe weights-only mode, so it skips "
            f"this one. If you trust the file, analyse it with `clusterprobe extract {raw} --trust`") in text
    assert "trust=True" not in text and "(command line: --trust)" not in text
    assert "run bad skipped: none of its checkpoints could be analysed (epochs 0, 1 failed, reasons above)" in text


def test_a_different_bank_in_the_report_cache_says_how_the_report_rebuilds_it(tmp_path):
    import numpy as np

    from clusterprobe import FeatureBank

    make_run(tmp_path / "runs" / "one", [0, 1])
    bank = tmp_path / "runs" / "one" / "features" / "test" / "epoch_0001"
    FeatureBank.write(bank, features={"H": np.zeros((4, 2), "float32")}, labels=np.arange(4))
    result = runner.invoke(app, ["report", str(tmp_path / "runs"), *FAST])
    assert result.exit_code == 0, result.output
    text = output(result)
    assert "run one, epoch 1 skipped:" in text and "already holds a different feature bank" in text
    assert (f"The report keeps its banks in {tmp_path / 'runs' / 'one' / 'features' / 'train' / 'epoch_0001'} and "
            f"{bank}: delete the damaged or different bank folder and run the report again to rebuild it.") in text
    import shutil

    shutil.rmtree(bank)
    result = runner.invoke(app, ["report", str(tmp_path / "runs"), *FAST])
    assert result.exit_code == 0 and "skipped" not in result.output, result.output
    assert FeatureBank.open(bank).n == 450


def test_report_names_a_run_without_checkpoints_and_a_file_given_for_a_folder(tmp_path):
    make_run(tmp_path / "runs" / "good", [0])
    (tmp_path / "runs" / "lost").mkdir()
    (tmp_path / "runs" / "lost" / "config.yaml").write_text("method: byol\ndataset: digits\n")
    result = runner.invoke(app, ["report", str(tmp_path / "runs"), *FAST])
    assert result.exit_code == 0, result.output
    assert (f"warning: run lost ({tmp_path / 'runs' / 'lost'}) has a config.yaml but no checkpoints/ "
            "folder: skipped") in output(result)
    checkpoint = tmp_path / "runs" / "good" / "checkpoints" / "epoch_0000.pt"
    result = runner.invoke(app, ["report", str(checkpoint)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{checkpoint} is a file; the report takes a folder of runs" in output(result)
    assert "does not exist" not in result.output


def test_a_second_report_into_the_same_folder_is_refused(tmp_path):
    """Issue 9: two reports over one folder ended in a FileNotFoundError traceback."""
    from clusterprobe.errors import LockedError
    from clusterprobe.io import exclusive_lock
    from clusterprobe.report import build_report

    runs = tmp_path / "runs"
    (runs / "r" / "checkpoints").mkdir(parents=True)
    (runs / "r" / "checkpoints" / "epoch_0001.pt").write_bytes(b"")  # discovery only needs the name
    with exclusive_lock(runs / "report", what="the report folder"):  # another report is running
        with pytest.raises(LockedError, match=r"report folder .*report"):
            build_report(runs, progress=False)
    assert not (runs / "report").exists()


def test_another_layers_selection_reuses_or_extends_the_cached_banks(tmp_path, monkeypatch):
    """Issue 9: rerunning the report with other --layers skipped every epoch: "already holds a
    different feature bank". A bank holding all requested layers is reused; one lacking some is
    extracted again in place (with the union of the layers) without --overwrite."""
    import pandas as pd

    import clusterprobe.extract as extract_module
    from clusterprobe import FeatureBank

    make_run(tmp_path / "runs" / "one", [0, 1])
    banks = [tmp_path / "runs" / "one" / "features" / split / f"epoch_{epoch:04d}"
             for split in ("train", "test") for epoch in (0, 1)]
    fast = ["--no-umap", "--no-pixels", "--seeds", "2"]

    def report(layers, name):
        result = runner.invoke(app, ["report", str(tmp_path / "runs"), "--out", str(tmp_path / name),
                                     "--layers", layers, *fast])
        assert result.exit_code == 0 and "skipped" not in result.output, result.output
        return pd.read_csv(tmp_path / name / "metrics.csv")

    first = report("H", "r1")
    assert [FeatureBank.open(bank).layers for bank in banks] == [["H"]] * 4
    h_rows = FeatureBank.open(banks[3])["H"].copy()

    both = report("H,Z", "r2")  # the banks lack Z: extracted again, keeping H
    assert [FeatureBank.open(bank).layers for bank in banks] == [["H", "Z"]] * 4
    assert (FeatureBank.open(banks[3])["H"] == h_rows).all()
    assert list(dict.fromkeys(both["layer"])) == ["H", "Z"] and set(both["epoch"]) == {0, 1}
    shared = ["epoch", "layer", "split", "metric"]
    h_first = first.set_index(shared)["value"].sort_index()
    h_again = both[both["layer"] == "H"].set_index(shared)["value"].sort_index()
    pd.testing.assert_series_equal(h_first, h_again)  # the same features give the same numbers

    def forbidden(*args, **kwargs):
        raise AssertionError("extracted again")

    monkeypatch.setattr(extract_module, "_extract_chunks", forbidden)
    only_z = report("Z", "r3")  # a subset of what the banks hold: reused as they are
    assert set(only_z["layer"]) == {"Z"} and set(only_z["epoch"]) == {0, 1}
    assert [FeatureBank.open(bank).layers for bank in banks] == [["H", "Z"]] * 4
    pd.testing.assert_series_equal(both[both["layer"] == "Z"].set_index(shared)["value"].sort_index(),
                                   only_z.set_index(shared)["value"].sort_index())


def test_a_bank_of_another_checkpoint_lacking_layers_is_never_replaced(tmp_path):
    from clusterprobe import FeatureBank, extract_features, load_checkpoint
    from clusterprobe.data import load_dataset

    make_run(tmp_path / "runs" / "one", [0, 1])
    make_run(tmp_path / "elsewhere", [1], seed=7)
    bank = tmp_path / "runs" / "one" / "features" / "test" / "epoch_0001"
    # another run's epoch-1 features where this run's epoch-1 bank belongs
    extract_features(load_checkpoint(tmp_path / "elsewhere" / "checkpoints" / "epoch_0001.pt"),
                     load_dataset("digits", split="test"), bank, layers=["H"], progress=False)
    before = FeatureBank.open(bank).meta["fingerprint"]
    result = runner.invoke(app, ["report", str(tmp_path / "runs"), "--layers", "H,Z", "--no-umap", "--seeds", "2"])
    assert result.exit_code == 0, result.output
    text = output(result)
    assert f"run one, epoch 1 skipped: {bank} already holds a different feature bank" in text
    assert "delete the damaged or different bank folder and run the report again to rebuild it" in text
    assert "--overwrite" not in text and "Choose another --out" not in text  # options of extract, not report
    assert FeatureBank.open(bank).meta["fingerprint"] == before and FeatureBank.open(bank).layers == ["H"]


def test_report_dtype_float16_stores_half_and_reuses_whatever_is_there(tmp_path):
    """`report --dtype float16` extracts float16 banks (half the disk); a later report in float32
    reuses them as they are instead of refusing them as different banks, and its metrics are
    those of the float32 banks to within float16 rounding."""
    from clusterprobe import FeatureBank

    make_run(tmp_path / "half" / "one", [0, 1])
    make_run(tmp_path / "full" / "one", [0, 1])
    half = runner.invoke(app, ["report", str(tmp_path / "half"), *FAST, "--no-pixels", "--dtype", "float16"])
    assert half.exit_code == 0, half.output
    full = runner.invoke(app, ["report", str(tmp_path / "full"), *FAST, "--no-pixels"])
    assert full.exit_code == 0, full.output
    bank16 = FeatureBank.open(tmp_path / "half" / "one" / "features" / "test" / "epoch_0001")
    bank32 = FeatureBank.open(tmp_path / "full" / "one" / "features" / "test" / "epoch_0001")
    assert bank16.dtype == np.float16 and bank32.dtype == np.float32
    assert bank16["H"].nbytes * 2 == bank32["H"].nbytes
    np.testing.assert_allclose(bank16["H"].astype(np.float32), bank32["H"], rtol=2**-10, atol=1e-6)
    again = runner.invoke(app, ["report", str(tmp_path / "half"), *FAST, "--no-pixels"])  # float32 asked
    assert again.exit_code == 0, again.output
    assert FeatureBank.open(bank16.path).meta["fingerprint"] == bank16.meta["fingerprint"]
    assert FeatureBank.open(bank16.path).dtype == np.float16
    tables = [pd.read_csv(tmp_path / name / "report" / "metrics.csv") for name in ("half", "full")]
    rows = [t[(t.metric == "knn_top1") & (t.epoch == 1)].value.iloc[0] for t in tables]
    assert rows[0] == pytest.approx(rows[1], abs=0.01)


# -- report options refused before any work -------------------------------------------------------
@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """One run whose H banks (epochs 0 and 1) are already cached by an earlier report."""
    root = tmp_path_factory.mktemp("cached")
    make_run(root / "runs" / "one", [0, 1])
    result = runner.invoke(app, ["report", str(root / "runs"), "--out", str(root / "first"), *FAST, "--no-pixels",
                                 "--no-per-class"])
    assert result.exit_code == 0, result.output
    return root / "runs"


def no_work(function):
    """Fail if a bank is extracted or a checkpoint is loaded for extraction."""
    import clusterprobe.extract as extract_module

    def forbidden(*args, **kwargs):
        raise AssertionError("extracted despite the bad option")

    original = extract_module._extract_chunks
    extract_module._extract_chunks = forbidden
    try:
        return function()
    finally:
        extract_module._extract_chunks = original


def test_unknown_layers_are_refused_up_front_naming_the_layers_that_exist(cached, tmp_path):
    """`report --layers Q,H` reported H alone and `--layers Q` every cached layer, without a word."""
    for layers, unknown in (("Q,H", "'Q'"), ("Q", "'Q'"), ("H,P5", "'P5'"), ("backbone.layer9", "'backbone.layer9'")):
        result = no_work(lambda: runner.invoke(app, ["report", str(cached), "--out", str(tmp_path / "r"),
                                                     "--no-umap", "--layers", layers]))
        text = output(result)
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert f"Unknown layer {unknown} (--layers, layers=...): no run has it. The runs offer H, P0, P1, Z " \
               "(run one), or module paths such as backbone.layer4" in text, text
    assert "Did you mean 'backbone.layer4'?" in text
    assert not (tmp_path / "r").exists()
    from clusterprobe.errors import LayerError
    from clusterprobe.report import ReportSettings, build_report

    with pytest.raises(LayerError, match=r"Unknown layers 'Q', 'P0x' .*them\..* Did you mean 'P0' \(for 'P0x'\)\?$"):
        build_report(cached, tmp_path / "r", ReportSettings(layers=("H", "Q", "P0x")), progress=False)


def test_a_layer_some_runs_lack_is_left_out_of_those_with_a_warning(tmp_path):
    """An encoder-only run (no projector) beside a full one: --layers H,Z reports the encoder's H
    and says that it has no Z (the Z request was dropped for it silently)."""
    runs = tmp_path / "runs"
    make_run(runs / "full", [1])
    save_checkpoint(runs / "encoder" / "checkpoints" / "epoch_0001.pt", tiny_model(projector=None), epoch=1,
                    method="resa", dataset="digits", run="encoder")
    (runs / "encoder" / "config.yaml").write_text("method: resa\ndataset: digits\n")
    result = runner.invoke(app, ["report", str(runs), "--layers", "H,Z", "--no-umap", "--no-pixels",
                                 "--no-per-class", "--seeds", "1"])
    assert result.exit_code == 0, result.output
    text = output(result)
    assert "run encoder has no layer Z (its model offers H): reported without it" in text
    table = pd.read_csv(runs / "report" / "metrics.csv")
    assert set(table[table.run == "encoder"].layer) == {"H"} and set(table[table.run == "full"].layer) == {"H", "Z"}
    result = runner.invoke(app, ["report", str(runs / "encoder"), "--layers", "Z", "--no-umap"])
    assert result.exit_code == 1 and "Unknown layer 'Z' (--layers, layers=...): no run has it. The runs offer " \
                                     "H (run encoder)" in output(result), result.output


def test_cluster_splits_the_report_does_not_extract_are_refused(cached, tmp_path):
    """`report --cluster-splits val` exited 0 with the probes alone: the report extracts train and
    test banks only, so no clustering metric was computed anywhere."""
    result = no_work(lambda: runner.invoke(app, ["report", str(cached), "--out", str(tmp_path / "r"), *FAST,
                                                 "--cluster-splits", "val"]))
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert ("cluster_splits (--cluster-splits) must be train, test or both: the report extracts banks of those "
            "two splits only, so clustering metrics on 'val' would be missing from the whole report") in output(result)
    assert not (tmp_path / "r").exists()
    from clusterprobe.errors import ReportError
    from clusterprobe.report import ReportSettings

    for splits in (("test", "val"), (), {"metric_overrides": {"cluster_splits": ("valid",)}}):
        with pytest.raises(ReportError, match="must be train, test or both"):
            ReportSettings(**splits) if isinstance(splits, dict) else ReportSettings(cluster_splits=splits)
    assert ReportSettings(cluster_splits="train, test").cluster_splits == ("train", "test")


def test_a_dtype_banks_cannot_have_is_refused_even_when_the_banks_are_cached(cached, tmp_path):
    """`report --dtype float64` ran to the end (exit 0) whenever the banks were already there:
    the dtype was checked only when a bank was extracted."""
    result = no_work(lambda: runner.invoke(app, ["report", str(cached), "--out", str(tmp_path / "r"), *FAST,
                                                 "--dtype", "float64"]))
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "Feature banks store float32 or float16, not 'float64'; use --dtype float32" in output(result)
    assert not (tmp_path / "r").exists()


def test_an_out_that_is_a_file_is_refused_before_any_work(cached, tmp_path):
    """`report --out notes.txt` (a file) ended in a NotADirectoryError traceback after the work."""
    from clusterprobe.errors import OutputPathError
    from clusterprobe.report import build_report

    (tmp_path / "notes.txt").write_text("mine\n")
    result = no_work(lambda: runner.invoke(app, ["report", str(cached), "--out", str(tmp_path / "notes.txt"),
                                                 *FAST]))
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"The report folder {tmp_path / 'notes.txt'} (--out) is a file" in output(result)
    assert "Choose another --out" in output(result)
    with pytest.raises(OutputPathError, match=r"notes.txt is a file, not a folder"):
        no_work(lambda: build_report(cached, tmp_path / "notes.txt" / "report", progress=False))
    assert (tmp_path / "notes.txt").read_text() == "mine\n"


@pytest.mark.parametrize("option, value, says", [
    ("--device", "gpu", "Unknown device 'gpu' (--device, device=...): use auto (the GPU when there is one, else "
                        "the CPU), cpu, cuda or cuda:N"),
    ("--branch", "foo", "Unknown branch 'foo' (--branch, branch=...): use online, momentum, teacher or student"),
    ("--batch-size", "0", "batch_size (--batch-size, batch_size=...) must be a whole number of at least 1; got 0."),
    ("--dataset", "cifar", "Unknown data set 'cifar' (--dataset, dataset=...): use one of cifar10, cifar100, "
                           "digits, imagefolder"),
    ("--seeds", "0", "metric_overrides (--seeds, ...): seeds = 0"),
])
def test_a_bad_option_is_one_error_before_any_work_not_a_warning_per_epoch(cached, tmp_path, option, value, says):
    """--device gpu, --branch foo, --batch-size 0 came back as one "skipped" reason per run and
    epoch (then "No run could be analysed" repeating them all); --seeds 0 only after extraction."""
    result = no_work(lambda: runner.invoke(app, ["report", str(cached), "--out", str(tmp_path / "r"), *FAST,
                                                 option, value]))
    text = output(result)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert says in text and text.count(says) == 1
    assert "skipped" not in text and "No run could be analysed" not in text
    assert not (tmp_path / "r").exists()


def test_a_gpu_that_is_not_there_is_one_error_before_any_work(cached, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = no_work(lambda: runner.invoke(app, ["report", str(cached), "--out", str(tmp_path / "r"), *FAST,
                                                 "--device", "cuda"]))
    text = output(result)
    assert result.exit_code == 1 and "torch sees no CUDA GPU here" in text and text.count("CUDA GPU") == 1, text
    assert "skipped" not in text


@pytest.mark.parametrize("field, value, error, says", [
    ("device", "gpu", "DeviceError", "Unknown device 'gpu'"),
    ("branch", "foo", "CheckpointError", "Unknown branch 'foo'"),
    ("batch_size", 0, "ReportError", "batch_size (--batch-size, batch_size=...) must be a whole number"),
    ("batch_size", 2.5, "ReportError", "batch_size (--batch-size, batch_size=...) must be a whole number"),
    ("umap_max_points", 0, "ReportError", "umap_max_points must be a whole number of at least 10"),
    ("formats", ("png", "jpgg"), "ReportError", "formats (formats=...) must name figure formats"),
    ("formats", (), "ReportError", "formats (formats=...) must name figure formats"),
    ("dtype", "float64", "FeatureBankError", "not 'float64'"),
    ("dataset", "cifar", "DatasetError", "Unknown data set 'cifar'"),
    ("epochs", (), "ReportError", "epochs (--epochs, epochs=...) must be epoch numbers"),
    ("epochs", (-1,), "ReportError", "epochs (--epochs, epochs=...) must be epoch numbers"),
    ("layers", (), "LayerError", "layers (--layers) must name at least one layer"),
    ("cluster_splits", ("val",), "ReportError", "cluster_splits (--cluster-splits) must be train, test or both"),
    ("metric_overrides", {"seedz": 1}, "MetricsError", "metric_overrides (--seeds, ...): Unknown setting(s) seedz"),
    ("metric_overrides", {"device": "gpu"}, "DeviceError", "Unknown device 'gpu'"),
    ("umap", "no", "ReportError", "umap must be True or False"),
])
def test_report_settings_are_checked_when_built_and_again_by_build_report(cached, tmp_path, field, value, error, says):
    """Every field that needs no run is checked when ReportSettings is built (a notebook gets the
    command line's error); one changed afterwards is checked again by build_report, before any work.
    Before, each surfaced late: per run and epoch (device, branch, batch size, dtype, data set,
    epochs), after all extraction (metric settings, formats, UMAP size) or never (cluster splits)."""
    import clusterprobe.errors as errors
    from clusterprobe.report import ReportSettings, build_report

    with pytest.raises(getattr(errors, error)) as caught:
        ReportSettings(**{field: value})
    assert says in str(caught.value)
    settings = ReportSettings()
    setattr(settings, field, value)
    with pytest.raises(getattr(errors, error), match=re.escape(says)):
        no_work(lambda: build_report(cached, tmp_path / "r", settings, progress=False))
    assert not (tmp_path / "r").exists()
