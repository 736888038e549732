"""Metrics: clustering and accuracy metrics of representations, per layer and epoch.

Each metric is a plain function on arrays (data positional, options keyword-only, inputs
validated); :func:`evaluate` runs the suite over feature banks (or a run directory) and
:func:`evaluate_arrays` over in-memory arrays, both returning one tidy pandas table of
:class:`MetricRow` records, cached incrementally.

>>> from clusterprobe.metrics import evaluate_arrays
>>> table = evaluate_arrays(X_train, y_train, X_test, y_test)  # doctest: +SKIP

Modules, one job each: :mod:`.registry` (the metrics and what can be asked for),
:mod:`.settings` (:class:`MetricSettings`), :mod:`.sources` (banks, run directories and arrays
as inputs), :mod:`.engine` (planning and computing the rows), :mod:`.table` (the row record and
the table's columns), :mod:`.cache` (cache keys and file), :mod:`.api` (the entry points), and
the metrics themselves: :mod:`.clustering`, :mod:`.silhouette`, :mod:`.probes`, :mod:`.spectra`.

Defaults such as k = number of classes, L2-normalised features and the cosine silhouette are
this project's choices (the paper does not publish its k-means settings); every result row
records the settings that produced it.
"""

from __future__ import annotations

from ..errors import MetricsError
from .api import default_cache_path, evaluate, evaluate_arrays
from .clustering import (
    KMeansResult,
    ari,
    calinski_harabasz,
    cluster_acc,
    cluster_agreement,
    cluster_validity,
    davies_bouldin,
    kmeans,
    nmi,
)
from .probes import ProbeResult, knn_accuracy, linear_probe
from .registry import METRIC_NAMES, resolve_metrics
from .settings import MetricSettings
from .silhouette import (
    SilhouetteStats,
    silhouette_samples,
    silhouette_samples_multi,
    silhouette_score,
    silhouette_stats,
    silhouette_stats_multi,
)
from .spectra import rankme, singular_values
from .table import MetricRow

__all__ = [
    "MetricsError",
    "MetricSettings",
    "MetricRow",
    "KMeansResult",
    "ProbeResult",
    "SilhouetteStats",
    "kmeans",
    "nmi",
    "ari",
    "cluster_acc",
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
    "METRIC_NAMES",
]
