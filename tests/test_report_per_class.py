"""Per-class views (issue 10 item 4) against scikit-learn."""

import matplotlib
import numpy as np

matplotlib.use("Agg")

from sklearn.datasets import make_blobs
from sklearn.metrics import silhouette_samples

from clusterprobe.report.figures import per_class_figure
from clusterprobe.report.per_class import per_class_view


def test_per_class_view_matches_sklearn_and_is_diagonal_for_separated_classes():
    X, y = make_blobs(n_samples=600, centers=4, n_features=16, cluster_std=0.5, random_state=0)
    X = X.astype(np.float32)
    view = per_class_view(X, y, device="cpu")
    assert view.contingency.shape == (4, 4) and view.contingency.sum() == 600
    assert view.accuracy == np.trace(view.contingency) / 600 and view.accuracy > 0.99
    reference = silhouette_samples(X, y, metric="cosine")
    np.testing.assert_allclose(view.silhouette, [reference[y == c].mean() for c in range(4)], atol=1e-5)


def test_a_mixed_class_shows_off_the_diagonal_and_a_low_silhouette():
    rng = np.random.default_rng(0)
    X, y = make_blobs(n_samples=400, centers=4, n_features=8, cluster_std=0.4, random_state=1)
    y = y.copy()
    y[rng.random(len(y)) < 0.3] = 3  # class 3 takes samples from every blob
    view = per_class_view(X.astype(np.float32), y, device="cpu")
    assert view.contingency[3].max() < view.contingency[3].sum()  # spread over clusters
    assert view.silhouette[3] == min(view.silhouette)
    fig = per_class_figure({"run": {"H": view, "Z": view}}, ["a", "b", "c", "d"])
    assert len(fig.axes) == 4


def test_class_names_are_shown_only_when_every_run_has_the_same(tmp_path):
    """The per-class and UMAP figures took the class names of the first run's bank: a CIFAR-10
    run beside a digits run (10 classes each) had its classes named 0..9."""
    from clusterprobe import FeatureBank
    from clusterprobe.report.build import ReportSettings, _per_class_views

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    paths = {}
    for run, names in (("digits-run", ["0", "1", "2"]), ("cifar-run", ["airplane", "automobile", "bird"]),
                       ("digits-too", ["0", "1", "2"])):
        paths[run] = tmp_path / run
        FeatureBank.write(paths[run], {"H": rng.normal(size=(60, 4)) + labels[:, None]}, labels,
                          meta={"class_names": names})
    settings = ReportSettings(layers=("H",), device="cpu")
    views, names = _per_class_views(paths, settings)
    assert set(views) == set(paths) and names is None
    same = {run: path for run, path in paths.items() if run != "cifar-run"}
    assert _per_class_views(same, settings)[1] == ["0", "1", "2"]
