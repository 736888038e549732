"""Per-class views of one bank: k-means clusters against the classes, and the silhouette per class.

For each layer: spherical k-means (k = number of classes, seed 0, as the metrics use) gives a
(classes x clusters) contingency table whose columns are matched to the classes with the
Hungarian assignment that also defines the clustering accuracy, so a perfect clustering is a
diagonal; and the mean cosine silhouette of each class's samples against the true classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics.cluster import contingency_matrix

from ..metrics.clustering import kmeans
from ..metrics.silhouette import silhouette_samples


@dataclass
class PerClassView:
    """``contingency`` (classes, clusters) counts with clusters matched to classes (column j is
    the cluster assigned to class j; unmatched clusters follow); ``silhouette`` (classes,) mean
    silhouette of each class's samples; ``accuracy`` the matched share on the diagonal."""

    contingency: np.ndarray
    silhouette: np.ndarray
    accuracy: float


def per_class_view(features: np.ndarray, labels: np.ndarray, *, seed: int = 0, device: str = "auto") -> PerClassView:
    """The per-class view of ``features`` (n, d) with integer ``labels`` (n,) in 0..C-1."""
    labels = np.asarray(labels, dtype=np.int64)
    classes = int(labels.max()) + 1
    clusters = kmeans(features, classes, seeds=[seed], device=device).labels[0]
    table = contingency_matrix(labels, clusters, eps=None)  # rows: classes present, cols: clusters present
    rows, cols = linear_sum_assignment(table, maximize=True)
    order = list(cols[np.argsort(rows)]) + [c for c in range(table.shape[1]) if c not in set(cols)]
    matched = table[:, order]
    accuracy = float(table[rows, cols].sum() / len(labels))
    values = silhouette_samples(features, labels, metric="cosine", device=device)
    per_class = np.array([values[labels == c].mean() if np.any(labels == c) else np.nan for c in range(classes)])
    return PerClassView(matched, per_class, accuracy)
