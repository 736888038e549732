"""Metrics engine: clustering and accuracy metrics of representations, per layer and epoch.

Each metric is a plain function on arrays; :func:`evaluate` runs the suite over feature banks
(or a run directory) and :func:`evaluate_arrays` over in-memory arrays, both returning one tidy
pandas table (see :mod:`clusterprobe.metrics.evaluate` for its columns and the cache).

>>> from clusterprobe.metrics import evaluate_arrays
>>> table = evaluate_arrays(X_train, y_train, X_test, y_test)  # doctest: +SKIP

Defaults such as k = number of classes, L2-normalised features and the cosine silhouette are
this project's choices (the paper does not publish its k-means settings); every result row
records the settings that produced it.
"""

from __future__ import annotations

from ..errors import MetricsError
from .clustering import (
    KMeansResult,
    ari,
    calinski_harabasz,
    cluster_agreement,
    cluster_validity,
    clustering_accuracy,
    davies_bouldin,
    kmeans,
    nmi,
)
from .evaluate import (
    MetricSettings,
    default_cache_path,
    evaluate,
    evaluate_arrays,
    resolve_metrics,
)
from .probes import ProbeResult, knn_accuracy, linear_probe
from .silhouette import (
    SilhouetteStats,
    silhouette_samples,
    silhouette_samples_multi,
    silhouette_score,
    silhouette_stats,
    silhouette_stats_multi,
)
from .spectra import rankme, singular_values

__all__ = [
    "MetricsError",
    "MetricSettings",
    "KMeansResult",
    "ProbeResult",
    "SilhouetteStats",
    "kmeans",
    "nmi",
    "ari",
    "clustering_accuracy",
    "cluster_agreement",
    "cluster_validity",
    "silhouette_samples",
    "silhouette_samples_multi",
    "silhouette_score",
    "silhouette_stats",
    "silhouette_stats_multi",
    "linear_probe",
    "knn_accuracy",
    "davies_bouldin",
    "calinski_harabasz",
    "rankme",
    "singular_values",
    "evaluate",
    "evaluate_arrays",
    "default_cache_path",
    "resolve_metrics",
]
