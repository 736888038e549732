"""The report over tiny hand-made runs: files, table contents, caching and bad input."""

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from clusterprobe import save_checkpoint
from clusterprobe.errors import ClusterprobeError
from clusterprobe.report import ReportSettings, build_report

from conftest import make_image_folder, tiny_model

FAST = dict(metric_overrides={"seeds": 2, "metrics": "nmi,ari,silhouette,linear,knn"}, umap_max_points=300)


def make_run(folder, method, epochs, dataset="digits", seed=0, **model_kwargs):
    for epoch in epochs:
        save_checkpoint(folder / "checkpoints" / f"epoch_{epoch:04d}.pt", tiny_model(seed=seed + epoch, **model_kwargs),
                        epoch=epoch, method=method, dataset=dataset, run=folder.name)
    (folder / "config.yaml").write_text(f"method: {method}\ndataset: {dataset}\n")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    make_run(runs / "resa", "resa", [0, 1, 2])
    make_run(runs / "byol", "byol", [0, 2], seed=10)
    return runs, build_report(runs, settings=ReportSettings(**FAST), progress=False)


def test_report_writes_page_figures_and_table(report):
    runs, result = report
    assert result.index_html == runs / "report" / "index.html" and result.warnings == []
    for name in ("layer_comparison", "training_dynamics", "umap", "per_class"):
        assert result.figures[name].stat().st_size > 10_000
        assert (runs / "report" / "figures" / f"{name}.pdf").exists()
    page = result.index_html.read_text()
    assert page.count("data:image/png;base64,") == 4 and "Last-epoch metrics (test split)" in page
    assert "href='figures/per_class.pdf'" in page and "href='figures/per_class.png'" in page
    table = pd.read_csv(result.metrics_csv)
    assert set(table["run"]) == {"resa", "byol", "raw pixels (digits)"}
    assert set(table["layer"]) == {"H", "P0", "P1", "Z", "pixels"}
    assert sorted(table.loc[table["run"] == "resa", "epoch"].unique()) == [0, 1, 2]
    assert sorted(table.loc[table["run"] == "byol", "epoch"].unique()) == [0, 2]
    assert {"nmi", "ari", "silhouette_true", "silhouette_true_spread", "linear_top1", "knn_top1"} <= set(table["metric"])
    assert table["value"].notna().all()
    # Banks are cached in each run; metrics too.
    assert (runs / "resa" / "features" / "test" / "epoch_0002" / "H.npy").exists()
    assert (runs / "resa" / "features" / "train" / "epoch_0002" / "H.npy").exists()


def test_report_values_are_the_metrics_of_the_banks(report):
    from sklearn.metrics import silhouette_score

    from clusterprobe import FeatureBank

    runs, result = report
    bank = FeatureBank.open(runs / "byol" / "features" / "test" / "epoch_0002")
    table = result.table
    row = table[(table.run == "byol") & (table.epoch == 2) & (table.layer == "Z") & (table.metric == "silhouette_true")]
    expected = silhouette_score(bank.features("Z", normalize=True), bank.labels, metric="cosine")
    assert abs(float(row["value"].iloc[0]) - expected) < 1e-5


def test_rerunning_a_finished_report_recomputes_nothing(report, monkeypatch):
    runs, first = report
    import clusterprobe.extract as extract_module
    import clusterprobe.metrics.engine as engine_module

    def forbidden(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr(extract_module, "_extract_chunks", forbidden)
    for name in ("_compute_split_units", "_compute_pair_unit"):
        monkeypatch.setattr(engine_module, name, forbidden)
    monkeypatch.setattr("clusterprobe.report.embedding.umap_embedding", forbidden)
    again = build_report(runs, settings=ReportSettings(**FAST), progress=False)
    pd.testing.assert_frame_equal(again.table.reset_index(drop=True), first.table.reset_index(drop=True))


def test_bad_runs_are_skipped_with_reasons(tmp_path):
    make_run(tmp_path / "good", "resa", [0, 1])
    make_run(tmp_path / "corrupt", "simclr", [0, 1], seed=3)
    (tmp_path / "corrupt" / "checkpoints" / "epoch_0001.pt").write_bytes(b"PK\x03\x04 truncated")
    make_run(tmp_path / "mixed", "byol", [0])
    save_checkpoint(tmp_path / "mixed" / "checkpoints" / "epoch_0001.pt",
                    tiny_model(projector=(32, 16)), epoch=1, method="byol", dataset="digits")
    make_run(tmp_path / "elsewhere", "vicreg", [0], dataset="cifar10")
    diverged = tiny_model(seed=7)
    with torch.no_grad():
        diverged.projector[0].weight.fill_(float("nan"))
    save_checkpoint(tmp_path / "good" / "checkpoints" / "epoch_0002.pt", diverged, epoch=2, method="resa",
                    dataset="digits")
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    result = build_report(tmp_path, settings=ReportSettings(**FAST, umap=False), progress=False)
    text = "\n".join(result.warnings)
    assert set(result.table["run"]) == {"good", "corrupt", "raw pixels (digits)"}
    assert "corrupt, epoch 1 skipped" in text and "truncated or corrupt" in text
    assert "good, epoch 2 skipped" in text and "non-finite" in text
    assert sorted(result.table.loc[result.table["run"] == "good", "epoch"].unique()) == [0, 1]
    assert "mixed skipped: its checkpoints have mixed architectures" in text
    assert "elsewhere skipped" in text and "cifar10" in text
    assert "empty" in text and "no checkpoints" in text
    assert "mixed architectures" in result.index_html.read_text()


def test_empty_runs_folder(tmp_path):
    with pytest.raises(ClusterprobeError, match="No runs found"):
        build_report(tmp_path, progress=False)


def test_notebook_runs_on_a_tiny_bank(report, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from conftest import REPO

    runs, _ = report
    notebook = nbformat.read(REPO / "notebooks" / "explore_feature_bank.ipynb", as_version=4)
    env = {"CLUSTERPROBE_BANK": str(runs / "resa" / "features" / "test" / "epoch_0002"),
           "CLUSTERPROBE_TRAIN_BANK": str(runs / "resa" / "features" / "train" / "epoch_0002"),
           "CLUSTERPROBE_UMAP_POINTS": "200"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    outputs = json.dumps([cell.get("outputs", []) for cell in notebook.cells])
    assert "FeatureBank(" in outputs and "image/png" in outputs and '"error"' not in outputs


def test_coarse_labels_give_the_fine_vs_coarse_figure(tmp_path):
    """A CIFAR-100-like ImageFolder (100 fine classes in 20 super-classes, 3 images each)."""
    import numpy as np
    from PIL import Image

    from clusterprobe.data import CIFAR100_COARSE_OF

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name, coarse in CIFAR100_COARSE_OF.items():
            (tmp_path / "data" / split / name).mkdir(parents=True)
            for i in range(3):  # images of one super-class share a hue, so coarse structure exists
                pixels = rng.integers(0, 60, (32, 32, 3)) + np.array([coarse * 9, 200 - coarse * 9, 100])
                Image.fromarray(pixels.clip(0, 255).astype("uint8")).save(tmp_path / "data" / split / name / f"{i}.png")
    runs = tmp_path / "runs"
    make_run(runs / "simclr", "simclr", [0, 1], dataset="cifar100", in_channels=3)
    result = build_report(runs, settings=ReportSettings(data_root=str(tmp_path / "data"), umap=False,
                                                        metric_overrides={"seeds": 1, "metrics": "nmi,ari,silhouette"}),
                          progress=False)
    assert result.figures["fine_vs_coarse"].stat().st_size > 10_000
    coarse = pd.read_csv(runs / "report" / "cache" / "simclr" / "coarse_labels_metrics.csv")
    fine = pd.read_csv(runs / "report" / "cache" / "simclr" / "fine_labels_metrics.csv")
    kmeans = lambda table: table[table["metric"].isin(["nmi", "ari"])]  # noqa: E731
    assert set(coarse["layer"]) == {"H", "P0", "P1", "Z"}
    assert (kmeans(coarse)["k"] == 20).all() and (kmeans(fine)["k"] == 100).all()
    # The super-classes share a hue: they are easier to cluster than the 100 fine classes.
    h_silhouette = lambda table: float(table[(table.layer == "H") & (table.metric == "silhouette_true")]["value"].iloc[0])  # noqa: E731
    assert h_silhouette(coarse) > h_silhouette(fine)


def test_branch_option_analyses_the_other_branch_and_caches_it_apart(tmp_path):
    from clusterprobe import FeatureBank

    runs = tmp_path / "runs"
    folder = runs / "resa"
    save_checkpoint(folder / "checkpoints" / "epoch_0001.pt", tiny_model(seed=1), epoch=1, method="resa",
                    dataset="digits", run="resa", momentum_model=tiny_model(seed=2))
    (folder / "config.yaml").write_text("method: resa\ndataset: digits\n")
    fast = dict(metric_overrides={"seeds": 1, "metrics": "nmi"}, umap=False, layers=("H",))
    default = build_report(runs, settings=ReportSettings(**fast), progress=False)
    online = build_report(runs, tmp_path / "online_report", settings=ReportSettings(**fast, branch="online"),
                          progress=False)
    trained = lambda table: table[table["method"] != "pixels"]  # the raw-pixels reference has no branch
    assert set(trained(default.table)["branch"]) == {"momentum"} and set(trained(online.table)["branch"]) == {"online"}
    momentum_bank = FeatureBank.open(folder / "features" / "test" / "epoch_0001")
    online_bank = FeatureBank.open(folder / "analyses" / "online" / "features" / "test" / "epoch_0001")
    assert momentum_bank.meta["checkpoint"]["branch"] == "momentum"
    assert online_bank.meta["checkpoint"]["branch"] == "online"
    assert not np.array_equal(momentum_bank.features("H"), online_bank.features("H"))
    page = online.index_html.read_text()
    assert "<th>branch</th>" in page and "online" in page
    # each report's numbers come from its own branch's banks only, before and after the other ran
    rows = lambda table: trained(table).set_index(["epoch", "layer", "split", "metric"])["value"].sort_index()
    assert not rows(default.table).equals(rows(online.table))
    again = build_report(runs, tmp_path / "again", settings=ReportSettings(**fast), progress=False)
    pd.testing.assert_series_equal(rows(again.table), rows(default.table))


def test_the_report_device_reaches_every_metric_computation(tmp_path, monkeypatch):
    """--device (ReportSettings.device) reached the extraction and the per-class views only: the
    metrics suite, the raw-pixels reference and the fine/coarse table ran on 'auto' (the GPU
    when present) whatever was asked."""
    import clusterprobe.metrics as metrics_module

    seen = []
    for name in ("evaluate", "evaluate_arrays"):
        original = getattr(metrics_module, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            seen.append((_name, kwargs.get("device")))
            return _original(*args, **kwargs)

        monkeypatch.setattr(metrics_module, name, spy)
    make_run(tmp_path / "runs" / "resa", "resa", [0, 1])
    settings = ReportSettings(**{**FAST, "umap": False}, device="cpu", per_class=False)
    build_report(tmp_path / "runs", settings=settings, progress=False)
    assert ("evaluate", "cpu") in seen and ("evaluate_arrays", "cpu") in seen  # suite and raw pixels
    assert all(device == "cpu" for _, device in seen), seen


def make_imagefolder_run(run, images, image_size, method="resa"):
    for epoch in (0, 1):
        save_checkpoint(run / "checkpoints" / f"epoch_{epoch:04d}.pt", tiny_model(in_channels=3, seed=epoch),
                        epoch=epoch, method=method, dataset="imagefolder", run=run.name)
    (run / "config.yaml").write_text(f"method: {method}\ndataset: imagefolder\ndata_root: {images}\n"
                                     f"image_size: {image_size}\n")
    return run


def test_an_imagefolder_run_is_analysed_at_the_image_size_it_was_trained_on(tmp_path):
    """The report loaded the run's data set without the image_size of its config.yaml, so an
    imagefolder run trained on 8x8 crops was measured on its 12x12 originals (other features,
    other normalisation statistics) under the same run and epoch labels."""
    from clusterprobe import FeatureBank, load_checkpoint
    from clusterprobe.data import load_dataset
    from clusterprobe.extract import extract_features

    images = tmp_path / "images"
    make_image_folder(images)
    run = make_imagefolder_run(tmp_path / "runs" / "resa", images, 8)
    settings = ReportSettings(**{**FAST, "umap": False}, layers=("H",), per_class=False, pixels=False)
    build_report(tmp_path / "runs", settings=settings, progress=False)
    bank = FeatureBank.open(run / "features" / "test" / "epoch_0001")
    expected = extract_features(load_checkpoint(run / "checkpoints" / "epoch_0001.pt"),
                                load_dataset("imagefolder", images, split="test", image_size=8),
                                tmp_path / "reference", layers=["H"], progress=False)
    assert bank.meta["dataset"]["info"]["image_size"] == 8
    np.testing.assert_allclose(bank["H"], expected["H"], atol=1e-6, rtol=0)


def test_raw_pixel_references_of_one_data_set_at_two_image_sizes_are_told_apart(tmp_path):
    """Two runs on the same images trained at different sizes have two raw-pixels references:
    both were named 'raw pixels (imagefolder)', one label for two sets of numbers (the layer
    comparison could not even place them)."""
    images = tmp_path / "images"
    make_image_folder(images)
    make_imagefolder_run(tmp_path / "runs" / "small", images, 8)
    make_imagefolder_run(tmp_path / "runs" / "large", images, 12, method="byol")
    settings = ReportSettings(**{**FAST, "umap": False}, layers=("H",), per_class=False)
    table = build_report(tmp_path / "runs", settings=settings, progress=False).table
    pixels = table[table["method"] == "pixels"]
    runs = set(pixels["run"])
    assert len(runs) == 2 and len(pixels) == len(pixels.drop_duplicates(["run", "layer", "split", "metric"]))
    for run in runs:  # each label says which size its numbers are of
        assert ("8px" in run) != ("12px" in run), run
