"""The suite's settings (:class:`MetricSettings`): every choice that changes a value, validated once."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ..errors import MetricsError
from ._validation import check_k, seed_list
from .clustering import INITS
from .probes import KNN_DEFAULT_K, KNN_PROTOCOLS, PROBE_PROTOCOLS
from .registry import UNITS, resolve_metrics
from .silhouette import METRICS as DISTANCES


@dataclass(frozen=True)
class MetricSettings:
    """Every choice that changes a metric's value. Defaults are this project's choices.

    metrics: what to compute, by name (``nmi, ari, cluster_acc, silhouette_true,
        silhouette_kmeans, davies_bouldin, calinski_harabasz, rankme, linear, knn``, or the
        selectors ``silhouette`` (both silhouettes), ``kmeans`` (nmi, ari, cluster_acc) and
        ``all``); a comma-separated string or a list, stored as the selected unit names.
    k: clusters (None = number of classes).
    normalize: L2-normalise features for k-means (spherical) and the silhouette.
    distance: silhouette metric, 'cosine' (exact, O(nkd)) or 'euclidean' (exact, O(n^2 d)).
    seeds: k-means seeds (a count or a list). silhouette_sample_size: None = exact.
    probe: 'lbfgs' (fast, = scikit-learn LogisticRegression(C=probe_C) on standardised
        features) or 'reference' (Adam protocol, ``probe_epochs`` epochs).
    knn: 'weighted-cosine' (k=20, T=0.07) or 'majority-euclidean' (k=5); knn_k overrides k.
    holdout, holdout_seed: stratified hold-out for probes when there is no separate eval split.
    cluster_splits: splits to compute clustering metrics on (None = every split present).
    device: 'auto' (GPU when present), 'cpu' or 'cuda'. Not part of the cache key: every metric but
        k-means gives the same value on either (to float rounding); k-means on a GPU draws its
        k-means++ seeds with the torch backend (other draws than FAISS's on the CPU, like other
        seeds), and its rows' protocol names the backend that ran (a cached result keeps its own).

    Raises:
        MetricsError: a value out of range or an unknown name (with the closest known one).
    """

    metrics: tuple[str, ...] = tuple(UNITS)
    k: int | None = None
    normalize: bool = True
    distance: str = "cosine"
    seeds: int | tuple[int, ...] = 3
    kmeans_niter: int = 100
    kmeans_tol: float = 1e-4
    kmeans_init: str = "k-means++"
    silhouette_sample_size: int | None = None
    probe: str = "lbfgs"
    probe_C: float = 1.0
    probe_epochs: int = 500
    knn: str = "weighted-cosine"
    knn_k: int | None = None
    knn_temperature: float = 0.07
    holdout: float = 0.2
    holdout_seed: int = 0
    cluster_splits: tuple[str, ...] | None = None
    device: str = "auto"

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("metrics", resolve_metrics(self.metrics))
        set_("seeds", seed_list(self.seeds))
        if self.k is not None:
            check_k(self.k, n=self.k if isinstance(self.k, int) else 0)  # an integer >= 2 (n checked later)
        _check_number("kmeans_niter", self.kmeans_niter, integer=True, low=1)
        _check_number("kmeans_tol", self.kmeans_tol, low=0.0)
        _check_number("probe_C", self.probe_C, low=0.0, strict=True)
        _check_number("probe_epochs", self.probe_epochs, integer=True, low=1)
        _check_number("knn_temperature", self.knn_temperature, low=0.0, strict=True)
        _check_number("holdout", self.holdout, low=0.0, high=1.0, strict=True)
        if self.knn_k is not None:
            _check_number("knn_k", self.knn_k, integer=True, low=1)
        if self.silhouette_sample_size is not None:
            _check_number("silhouette_sample_size", self.silhouette_sample_size, integer=True, low=2)
        if self.distance not in DISTANCES:
            raise MetricsError(f"distance must be 'cosine' or 'euclidean'; got {self.distance!r}.")
        if self.probe not in PROBE_PROTOCOLS:
            raise MetricsError(f"probe must be one of {', '.join(PROBE_PROTOCOLS)}; got {self.probe!r}.")
        if self.knn not in KNN_PROTOCOLS:
            raise MetricsError(f"knn must be one of {', '.join(KNN_PROTOCOLS)}; got {self.knn!r}.")
        if self.kmeans_init not in INITS:
            raise MetricsError(f"kmeans_init must be one of {', '.join(INITS)}; got {self.kmeans_init!r}.")
        if isinstance(self.cluster_splits, str):
            set_("cluster_splits", tuple(s.strip() for s in self.cluster_splits.split(",") if s.strip()))
        elif self.cluster_splits is not None:
            set_("cluster_splits", tuple(self.cluster_splits))

    def replace(self, **changes) -> "MetricSettings":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def resolved(self, k: int | None) -> dict:
        """The settings as recorded in results, with k and knn_k made explicit."""
        values = dataclasses.asdict(self)
        values["k"] = k
        values["seeds"] = list(self.seeds)
        values["knn_k"] = self.knn_k or KNN_DEFAULT_K[self.knn]
        return values


def settings_with(settings: MetricSettings | None, overrides: dict) -> MetricSettings:
    """``settings`` (default: :class:`MetricSettings`) with ``overrides`` (field names) applied.

    Raises:
        MetricsError: ``settings`` is not a :class:`MetricSettings`, or an override names no field.
    """
    if settings is None:
        settings = MetricSettings()
    elif not isinstance(settings, MetricSettings):
        raise MetricsError(
            f"settings must be a MetricSettings (or None); got {type(settings).__name__}. Pass single "
            "options as keywords instead, e.g. evaluate(source, k=20)."
        )
    if overrides:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(MetricSettings)}
        if unknown:
            raise MetricsError(f"Unknown setting(s) {', '.join(sorted(unknown))}; see MetricSettings for the options.")
        settings = settings.replace(**overrides)
    return settings


def _check_number(name: str, value, integer: bool = False, low=None, high=None, strict: bool = False) -> None:
    """Raise :class:`MetricsError` unless ``value`` is a number (an integer if asked) in range."""
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    ok = isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if strict else value >= low
    if ok and high is not None:
        ok = value < high if strict else value <= high
    if not ok:
        bounds = "" if low is None else f" {'>' if strict else '>='} {low}"
        bounds += "" if high is None else f" and {'<' if strict else '<='} {high}"
        raise MetricsError(f"{name} must be {'an integer' if integer else 'a number'}{bounds}; got {value!r}.")
