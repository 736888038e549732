"""The raw-pixels reference of the report (issue 10 item 1), against scikit-learn."""

import numpy as np
import pandas as pd

from conftest import tiny_model

from clusterprobe import save_checkpoint
from clusterprobe.data import load_dataset
from clusterprobe.report import ReportSettings, build_report
from clusterprobe.report.pixels import pixel_features


def test_pixel_features_are_the_flattened_normalised_images():
    test = load_dataset("digits", split="test")
    X, y = pixel_features(test)
    assert X.shape == (450, 64) and X.dtype == np.float32 and np.array_equal(y, test.targets)
    np.testing.assert_array_equal(X[7], test[7][0].flatten().numpy())
    subset, _ = pixel_features(test, max_rows=100)
    assert subset.shape == (100, 64)


def test_report_shows_raw_pixels_once_per_data_set_and_caches_them(tmp_path):
    from sklearn.linear_model import LogisticRegression

    runs = tmp_path / "runs"
    for name, seed in (("resa", 0), ("byol", 5)):
        for epoch in (0, 1):
            save_checkpoint(runs / name / "checkpoints" / f"epoch_{epoch:04d}.pt", tiny_model(seed=seed + epoch),
                            epoch=epoch, method=name, dataset="digits", run=name)
        (runs / name / "config.yaml").write_text(f"method: {name}\ndataset: digits\n")
    settings = ReportSettings(metric_overrides={"seeds": 1, "metrics": "nmi,linear"}, umap=False, per_class=False,
                              layers=("H",))
    result = build_report(runs, settings=settings, progress=False)
    pixels = result.table[result.table["run"] == "raw pixels (digits)"]
    assert set(pixels["layer"]) == {"pixels"} and set(pixels["metric"]) >= {"nmi", "linear_top1"}
    linear = float(pixels.loc[pixels["metric"] == "linear_top1", "value"].iloc[0])
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    X_train, y_train = pixel_features(train)
    X_test, y_test = pixel_features(test)
    reference = LogisticRegression(max_iter=2000).fit(X_train, y_train).score(X_test, y_test)
    assert abs(linear - reference) < 0.02, (linear, reference)
    page = result.index_html.read_text()
    assert "raw pixels (digits)" in page  # a row of the paper and last-epoch tables
    cache = runs / "report" / "cache" / "pixels-digits.csv"
    before = cache.read_text()
    again = build_report(runs, settings=settings, progress=False)  # cached: same rows, file untouched
    assert cache.read_text() == before
    pd.testing.assert_frame_equal(
        again.table[again.table["run"] == "raw pixels (digits)"].reset_index(drop=True)[["metric", "value"]],
        pixels.reset_index(drop=True)[["metric", "value"]])
