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
