"""notebooks/explore_feature_bank.ipynb: its code cells (run in this process, UMAP left out; the
whole notebook runs in a kernel in test_report.py) on a demo-like run, from notebooks/."""

import json
import os

import numpy as np
import pytest

from conftest import REPO, tiny_model

NOTEBOOK = REPO / "notebooks" / "explore_feature_bank.ipynb"


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory):
    """<tmp>/clusterprobe-demo/runs/resa/features/{train,test}/epoch_000{1,2} (layers H, Z) and <tmp>/notebooks."""
    from clusterprobe import load_dataset
    from clusterprobe.extract import extract_features
    from clusterprobe.metrics._device import threads_for

    root = tmp_path_factory.mktemp("nb")
    features = root / "clusterprobe-demo" / "runs" / "resa" / "features"
    with threads_for(1):
        for epoch in (1, 2):
            model = tiny_model(seed=epoch)
            for split in ("train", "test"):
                extract_features(model, load_dataset("digits", split=split), features / split / f"epoch_{epoch:04d}",
                                 layers=["H", "Z"], progress=False, device="cpu")
    (root / "notebooks").mkdir()
    return root, features


def _run_cells(cwd, monkeypatch, skip=("umap",)):
    monkeypatch.chdir(cwd)
    for name in ("CLUSTERPROBE_BANK", "CLUSTERPROBE_TRAIN_BANK"):
        monkeypatch.delenv(name, raising=False)
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    namespace = {}
    for cell in cells:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and not any(word in source for word in skip):
            exec(compile(source, str(NOTEBOOK), "exec"), namespace)
    return namespace


def test_the_table_is_the_banks_own_split_and_the_demo_bank_is_found_from_notebooks(demo_like, monkeypatch):
    """The table was table.pivot_table(...): its default mean averaged the train and test rows of
    each clustering metric (a train bank adds train rows), shown as the bank's own values. And the
    default bank, a path relative to the repository root, was not found from notebooks/ where
    Jupyter starts the notebook (nor at another epoch than the demo's default 6)."""
    import matplotlib
    from sklearn.metrics import silhouette_score

    from clusterprobe import FeatureBank

    matplotlib.use("Agg")
    root, features = demo_like
    ns = _run_cells(root / "notebooks", monkeypatch)
    assert ns["BANK"] == features / "test" / "epoch_0002"  # the newest epoch, seen from notebooks/
    assert ns["TRAIN_BANK"] == features / "train" / "epoch_0002"  # the same checkpoint's train bank
    table, per_layer = ns["table"], ns["per_layer"]
    assert list(per_layer.index) == ["H", "Z"] and set(table["split"]) == {"train", "test"}
    test_bank = FeatureBank.open(features / "test" / "epoch_0002")
    for layer in ("H", "Z"):
        expected = silhouette_score(test_bank.features(layer, normalize=True), test_bank.labels, metric="cosine")
        assert per_layer.loc[layer, "silhouette_true"] == pytest.approx(expected, abs=1e-5)
        rows = table[(table["layer"] == layer) & (table["metric"] == "rankme")].set_index("split")["value"]
        assert per_layer.loc[layer, "rankme"] == rows["test"] != rows["train"]
    assert set(table.loc[table["metric"] == "knn_top1", "evaluation"]) == {"train->test"}
    assert np.isfinite(per_layer.to_numpy()).all()


def test_without_a_bank_it_says_how_to_make_one(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="run `clusterprobe demo` in the repository root first.*CLUSTERPROBE_BANK"):
        _run_cells(tmp_path, monkeypatch)
