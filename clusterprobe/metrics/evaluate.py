"""The metric suite: feature banks (or arrays) in, one tidy pandas table out, cached incrementally.

One row per (run, method, epoch, layer, split, metric) with ``value``, ``std`` (over k-means
seeds where there are seeds), ``n`` (samples scored) and the settings that produced it. Metric
names (all values are fractions or plain numbers, never percentages):

==========================  =========================================================  =======
metric                      meaning                                                    needs
==========================  =========================================================  =======
nmi, ari, cluster_acc       k-means clusters vs ground truth (mean, std over seeds)    labels
silhouette_true             mean silhouette of the ground-truth classes                labels
silhouette_true_spread      its standard deviation across samples (stability)          labels
silhouette_kmeans           mean silhouette of the k-means clusters (std over seeds)   k
silhouette_kmeans_spread    std across samples of that silhouette (mean over seeds)    k
davies_bouldin              Davies-Bouldin index of the k-means clusters               k
calinski_harabasz           Calinski-Harabasz index of the k-means clusters            k
rankme                      RankMe effective rank                                      --
linear_top1, linear_top5    linear probe accuracy (train split -> eval split)          labels
knn_top1, knn_top5          kNN accuracy (train split -> eval split)                   labels
==========================  =========================================================  =======

Defaults are this project's choices (the paper does not publish its k-means settings): k = the
number of classes, L2-normalised features, cosine silhouette, 3 seeds, L-BFGS linear probe,
weighted-cosine 20-NN. Each row records the choice.

Caching: rows are stored in a CSV (``<run>/metrics.csv`` for a run directory,
``<bank>.metrics.csv`` beside a single bank) keyed by the data's identity (bank metadata and
file stamps, or a hash of arrays) and a hash of exactly the settings each metric depends on
(plus the engine version). Asking again computes only what is missing; changed settings or
re-extracted features are never answered from the cache.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..bank import FeatureBank
from ..errors import FeatureBankError, closest_name
from ..io import fingerprint
from . import clustering, probes, silhouette, spectra
from ..linalg import l2_normalize
from ._validation import (
    MetricsError,
    check_k,
    check_two_classes,
    seed_list,
)
from .cache import COLUMNS, MetricsCache, coerce
from .sources import (
    ArraySplit,
    BankSplit,
    Group,
    SplitData,
    check_pair,
    find_banks,
    group_from_banks,
    pick_roles,
)

ENGINE_VERSION = "1"
CACHE_NAME = "metrics.csv"

# -- what can be asked for ------------------------------------------------------------------

GROUPS: dict[str, tuple[str, ...]] = {
    "nmi": ("nmi",),
    "ari": ("ari",),
    "acc": ("cluster_acc",),
    "silhouette": ("silhouette_true", "silhouette_kmeans"),
    "linear": ("linear",),
    "knn": ("knn",),
    "db": ("davies_bouldin",),
    "ch": ("calinski_harabasz",),
    "rankme": ("rankme",),
}
ALIASES: dict[str, tuple[str, ...]] = {
    "all": tuple(GROUPS),
    "kmeans": ("nmi", "ari", "acc"),
    "cluster_acc": ("acc",),
    "accuracy": ("linear", "knn"),
    "probe": ("linear",),
    "linear_probe": ("linear",),
    "davies_bouldin": ("db",),
    "calinski_harabasz": ("ch",),
    "silhouette_true": ("silhouette",),
    "silhouette_kmeans": ("silhouette",),
}

KMEANS_KEYS = ("k", "normalize", "seeds", "kmeans_niter", "kmeans_tol", "kmeans_init")
SILHOUETTE_KEYS = ("normalize", "distance", "silhouette_sample_size")


@dataclass(frozen=True)
class Unit:
    """A piece of work that is computed and cached as a whole (one or two metric rows)."""

    name: str
    metrics: tuple[str, ...]
    pair: bool  # scored train split -> eval split (probes) rather than on one split
    needs_labels: bool
    needs_k: bool
    keys: tuple[str, ...]


UNITS: dict[str, Unit] = {
    u.name: u
    for u in (
        Unit("rankme", ("rankme",), False, False, False, ()),
        Unit("nmi", ("nmi",), False, True, True, KMEANS_KEYS),
        Unit("ari", ("ari",), False, True, True, KMEANS_KEYS),
        Unit("cluster_acc", ("cluster_acc",), False, True, True, KMEANS_KEYS),
        Unit("davies_bouldin", ("davies_bouldin",), False, False, True, KMEANS_KEYS),
        Unit("calinski_harabasz", ("calinski_harabasz",), False, False, True, KMEANS_KEYS),
        Unit("silhouette_true", ("silhouette_true", "silhouette_true_spread"), False, True, False, SILHOUETTE_KEYS),
        Unit(
            "silhouette_kmeans",
            ("silhouette_kmeans", "silhouette_kmeans_spread"),
            False, False, True, KMEANS_KEYS + SILHOUETTE_KEYS,
        ),
        Unit("linear", ("linear_top1", "linear_top5"), True, True, False, ("probe", "probe_C", "probe_epochs")),
        Unit("knn", ("knn_top1", "knn_top5"), True, True, False, ("knn", "knn_k", "knn_temperature")),
    )
}
METRIC_ORDER = [m for u in UNITS.values() for m in u.metrics]


def resolve_metrics(metrics: str | Iterable[str] | None) -> tuple[str, ...]:
    """Turn ``"nmi,ari,silhouette"`` (or a list, or None = all) into metric group names."""
    if metrics is None:
        return tuple(GROUPS)
    names = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    out: list[str] = []
    for raw in names:
        name = str(raw).strip().lower().replace("-", "_")
        if not name:
            continue
        expanded = (name,) if name in GROUPS else ALIASES.get(name)
        if expanded is None:
            known = sorted(set(GROUPS) | set(ALIASES))
            raise MetricsError(
                f"Unknown metric {raw!r}. Choose from: {', '.join(known)}.{closest_name(name, known)}"
            )
        out.extend(g for g in expanded if g not in out)
    if not out:
        raise MetricsError("No metrics were asked for; pass e.g. metrics='nmi,ari,silhouette'.")
    return tuple(out)


# -- settings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricSettings:
    """Every choice that changes a metric's value. Defaults are this project's choices.

    metrics: groups to compute (``nmi, ari, acc, silhouette, linear, knn, db, ch, rankme``; a
        comma-separated string is accepted). k: clusters (None = number of classes).
    normalize: L2-normalise features for k-means (spherical) and the silhouette.
    distance: silhouette metric, 'cosine' (exact, O(nkd)) or 'euclidean' (exact, O(n^2 d)).
    seeds: k-means seeds (a count or a list). silhouette_sample_size: None = exact.
    probe: 'lbfgs' (fast, = scikit-learn LogisticRegression(C=probe_C) on standardised
        features) or 'reference' (Adam protocol, ``probe_epochs`` epochs).
    knn: 'weighted-cosine' (k=20, T=0.07) or 'majority-euclidean' (k=5); knn_k overrides k.
    holdout, holdout_seed: stratified hold-out for probes when there is no separate eval split.
    cluster_splits: splits to compute clustering metrics on (None = every split present).
    device: 'auto' (GPU when present), 'cpu' or 'cuda'; does not change results.
    """

    metrics: tuple[str, ...] = tuple(GROUPS)
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
        if self.distance not in silhouette.METRICS:
            raise MetricsError(f"distance must be 'cosine' or 'euclidean'; got {self.distance!r}.")
        if self.probe not in probes.PROBE_PROTOCOLS:
            raise MetricsError(f"probe must be one of {', '.join(probes.PROBE_PROTOCOLS)}; got {self.probe!r}.")
        if self.knn not in probes.KNN_PROTOCOLS:
            raise MetricsError(f"knn must be one of {', '.join(probes.KNN_PROTOCOLS)}; got {self.knn!r}.")
        if self.kmeans_init not in clustering.INITS:
            raise MetricsError(f"kmeans_init must be one of {', '.join(clustering.INITS)}; got {self.kmeans_init!r}.")
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
        values["knn_k"] = self.knn_k or probes.KNN_DEFAULT_K[self.knn]
        return values


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


def _settings_for(unit: Unit, resolved: dict, holdout: bool) -> dict:
    """The settings ``unit`` depends on: what its cache key hashes and its rows record."""
    keys = list(unit.keys)
    if unit.pair and holdout:
        keys += ["holdout", "holdout_seed"]
    chosen = {key: resolved[key] for key in keys}
    if unit.name == "linear" and resolved["probe"] == "lbfgs":
        chosen.pop("probe_epochs")  # only the reference protocol has epochs
    if unit.name == "knn" and resolved["knn"] != "weighted-cosine":
        chosen.pop("knn_temperature")
    return chosen


def _settings_hash(unit: Unit, chosen: dict) -> str:
    """Cache key of a unit's settings; the engine version invalidates results of older code."""
    return fingerprint({"engine": ENGINE_VERSION, "unit": unit.name, "settings": chosen})


# -- computing ----------------------------------------------------------------------------------


@dataclass
class _Context:
    group: Group
    layer: str
    split: str
    unit: Unit
    settings_hash: str
    settings_json: str
    data_id: str

    def row(self, metric: str, value, std=math.nan, n=None, **extra) -> dict:
        row = {
            "run": self.group.run, "method": self.group.method, "epoch": self.group.epoch,
            "layer": self.layer, "split": self.split, "metric": metric,
            "value": value, "std": std, "n": n, "k": None, "normalize": None, "distance": "",
            "seeds": "", "protocol": "", "evaluation": "", "unit": self.unit.name,
            "settings": self.settings_json, "settings_hash": self.settings_hash,
            "data_id": self.data_id, "note": "",
        }
        row.update(extra)
        return row


def _skip_row(group: Group, layer: str, split: str, unit: Unit, reason: str) -> list[dict]:
    ctx = _Context(group, layer, split, unit, "", "", "")
    return [ctx.row(metric, math.nan, note=f"skipped: {reason}") for metric in unit.metrics]


class _SplitWork:
    """Lazily loaded features, labels and k-means results of one (layer, split)."""

    _UNSET = object()

    def __init__(self, data: SplitData, layer: str, settings: MetricSettings, k: int | None):
        self.data, self.layer, self.settings, self.k = data, layer, settings, k
        self._X = None
        self._km = None
        self._labels = self._UNSET

    @property
    def X(self) -> np.ndarray:
        if self._X is None:
            self._X = self.data.features(self.layer)
        return self._X

    @property
    def labels(self) -> np.ndarray | None:
        if self._labels is self._UNSET:
            self._labels = self.data.labels()
        return self._labels

    @property
    def kmeans(self) -> clustering.KMeansResult:
        if self._km is None:
            s = self.settings
            self._km = clustering.kmeans(
                self.X, self.k, seeds=s.seeds, normalize=s.normalize, niter=s.kmeans_niter,
                tol=s.kmeans_tol, init=s.kmeans_init, device=s.device,
            )
        return self._km


def _kmeans_columns(s: MetricSettings, k: int) -> dict:
    return {
        "k": k, "normalize": s.normalize, "distance": "cosine" if s.normalize else "euclidean",
        "seeds": ",".join(map(str, s.seeds)),
        "protocol": f"faiss k-means ({s.kmeans_init}, tol {s.kmeans_tol:g}, <= {s.kmeans_niter} iterations"
                    f"{', spherical' if s.normalize else ''})",
    }


def _compute_split_units(work: _SplitWork, units: list[tuple[Unit, _Context]]) -> list[dict]:
    """Compute the per-split units in ``units`` on one (layer, split); returns rows."""
    s = work.settings
    rows: list[dict] = []
    by_name = {unit.name: ctx for unit, ctx in units}
    n = work.X.shape[0]
    if "rankme" in by_name:
        rows.append(by_name["rankme"].row("rankme", spectra.rankme(work.X), n=n, normalize=False))
    agreement = [name for name in ("nmi", "ari", "cluster_acc") if name in by_name]
    if agreement:
        scores = clustering.cluster_agreement(work.labels, work.kmeans, agreement)
        for name in agreement:
            mean, std = scores[name]
            rows.append(by_name[name].row(name, mean, std, n, **_kmeans_columns(s, work.k)))
    validity = [name for name in clustering.LABEL_FREE if name in by_name]
    if validity:
        scores = clustering.cluster_validity(work.X, work.kmeans, validity)
        for name in validity:
            mean, std = scores[name]
            rows.append(by_name[name].row(name, mean, std, n, **_kmeans_columns(s, work.k)))
    if "silhouette_true" in by_name or "silhouette_kmeans" in by_name:
        rows.extend(_silhouette_rows(work, by_name))
    return rows


def _silhouette_rows(work: _SplitWork, by_name: dict[str, _Context]) -> list[dict]:
    s = work.settings
    label_sets, owners = [], []
    if "silhouette_true" in by_name:
        label_sets.append(work.labels)
        owners.append("true")
    if "silhouette_kmeans" in by_name:
        label_sets.extend(list(work.kmeans.labels))
        owners.extend(["kmeans"] * len(work.kmeans.labels))
    # cosine distances ignore row norms; only the Euclidean silhouette depends on normalisation
    X = l2_normalize(work.X) if s.normalize and s.distance == "euclidean" else work.X
    usable = [i for i, labels in enumerate(label_sets) if np.unique(labels).size >= 2]
    stats = dict(zip(usable, silhouette.silhouette_stats_multi(
        X, [label_sets[i] for i in usable], metric=s.distance,
        sample_size=s.silhouette_sample_size, random_state=0, device=s.device,
    )))
    common = {"normalize": s.normalize, "distance": s.distance}
    rows = []
    if "true" in owners:
        ctx, st = by_name["silhouette_true"], stats[0]
        cols = dict(common, protocol="ground-truth labels"
                    + (f", {st.n} sampled" if st.sampled else ""))
        rows.append(ctx.row("silhouette_true", st.mean, math.nan, st.n, **cols))
        rows.append(ctx.row("silhouette_true_spread", st.std, math.nan, st.n, **cols))
    if "kmeans" in owners:
        ctx = by_name["silhouette_kmeans"]
        seeds = [stats[i] for i, o in enumerate(owners) if o == "kmeans" and i in stats]
        cols = dict(_kmeans_columns(s, work.k), **common)
        cols["protocol"] = "k-means labels" + (f", {seeds[0].n} sampled" if seeds and seeds[0].sampled else "")
        means = np.array([st.mean for st in seeds]) if seeds else np.array([math.nan])
        spreads = np.array([st.std for st in seeds]) if seeds else np.array([math.nan])
        n = seeds[0].n if seeds else work.X.shape[0]
        rows.append(ctx.row("silhouette_kmeans", float(means.mean()), float(means.std()), n, **cols))
        rows.append(ctx.row("silhouette_kmeans_spread", float(spreads.mean()), float(spreads.std()), n, **cols))
    return rows


def _compute_pair_unit(
    unit: Unit, ctx: _Context, settings: MetricSettings, train: _SplitWork, test: _SplitWork | None
) -> list[dict]:
    """Rows of a probe unit: fit on ``train``, score on ``test`` (or a hold-out when None)."""
    s = settings
    X_test = None if test is None else test.X
    y_test = None if test is None else test.labels
    if unit.name == "linear":
        result = probes.linear_probe(
            train.X, train.labels, X_test, y_test, protocol=s.probe, C=s.probe_C, epochs=s.probe_epochs,
            holdout=s.holdout, seed=s.holdout_seed, device=s.device,
        )
        protocol = f"lbfgs logistic regression, C={s.probe_C:g}, standardised" if s.probe == "lbfgs" else (
            f"reference: Adam, lr 1e-2 -> 1e-6, {s.probe_epochs} epochs, batch 1000")
        cols = {"normalize": False, "distance": ""}
    else:
        result = probes.knn_accuracy(
            train.X, train.labels, X_test, y_test, protocol=s.knn, k=s.knn_k,
            temperature=s.knn_temperature, holdout=s.holdout, seed=s.holdout_seed, device=s.device,
        )
        k = result.settings["k"]
        protocol = (f"weighted-cosine, k={k}, T={s.knn_temperature:g}" if s.knn == "weighted-cosine"
                    else f"majority-euclidean, k={k}")
        cols = {"normalize": s.knn == "weighted-cosine", "distance": "cosine" if s.knn == "weighted-cosine" else "euclidean"}
    prefix = unit.name
    rows = [ctx.row(f"{prefix}_top1", result.top1, math.nan, result.n_test, protocol=protocol,
                    evaluation=result.evaluation, **cols)]
    if result.top5 is not None:
        rows.append(ctx.row(f"{prefix}_top5", result.top5, math.nan, result.n_test, protocol=protocol,
                            evaluation=result.evaluation, **cols))
    return rows


class _LayerJob:
    """Everything asked for one layer of one group: cached rows, skipped rows and new work."""

    def __init__(self, group: Group, layer: str, settings: MetricSettings, cache: MetricsCache, recompute: bool, progress):
        self.group, self.layer, self.settings = group, layer, settings
        self.cache, self.recompute, self.progress = cache, recompute, progress
        self.works: dict[str, _SplitWork] = {}

    def work(self, split: str) -> _SplitWork:
        """Lazily loaded data of one split for this layer (shared by clustering and probes)."""
        if split not in self.works:
            data = self.group.splits[split]
            k = self.settings.k if self.settings.k is not None else data.num_classes()
            self.works[split] = _SplitWork(data, self.layer, self.settings, k)
        return self.works[split]

    def _cached(self, data_id: str, split: str, unit: Unit, h: str) -> list[dict] | None:
        if self.recompute:
            return None
        cached = self.cache.lookup(data_id, self.layer, split, unit.name, h)
        return None if cached is None else [dict(r) for r in cached]

    def split_rows(self, split: str, units: list[Unit]) -> list[dict]:
        """Per-split metrics (clustering, silhouette, RankMe) of one split."""
        work = self.work(split)
        data, labels = work.data, work.labels
        if labels is not None and any(u.needs_labels for u in units):
            check_two_classes(labels, f"labels of {data.name}")
        resolved = self.settings.resolved(work.k)
        rows, todo = [], []
        for unit in units:
            if unit.needs_labels and labels is None:
                rows += _skip_row(self.group, self.layer, split, unit, f"{data.name} has no labels")
                continue
            if unit.needs_k and work.k is None:
                rows += _skip_row(self.group, self.layer, split, unit, "no labels to take k from; pass k")
                continue
            chosen = _settings_for(unit, resolved, holdout=False)
            h = _settings_hash(unit, chosen)
            data_id = data.data_id(self.layer)
            cached = self._cached(data_id, split, unit, h)
            if cached is not None:
                rows += cached
            else:
                todo.append((unit, _Context(self.group, self.layer, split, unit, h, json.dumps(chosen, sort_keys=True), data_id)))
        if todo:
            if work.k is not None and any(u.needs_k for u, _ in todo):
                check_k(work.k, work.X.shape[0])
            if self.progress:
                self.progress(f"{self.group.label}layer {self.layer}, {split}: {', '.join(u.name for u, _ in todo)}")
            new = _compute_split_units(work, todo)
            self.cache.add(new)
            rows += new
        return rows

    def pair_rows(self, units: list[Unit]) -> list[dict]:
        """Probe metrics: fit on the train split, score on the eval split (or a hold-out)."""
        group = self.group
        holdout = not (group.train_split and group.eval_split)
        fit_name = group.train_split or group.eval_split
        score_name = group.eval_split or group.train_split
        fit, score = self.work(fit_name), self.work(score_name)
        missing = [w.data for w in (fit, score) if w.labels is None]
        resolved = self.settings.resolved(None)
        rows = []
        for unit in units:
            if missing:
                rows += _skip_row(group, self.layer, score_name, unit, f"{missing[0].name} has no labels")
                continue
            for work in (fit, score):
                check_two_classes(work.labels, f"labels of {work.data.name}")
            chosen = _settings_for(unit, resolved, holdout=holdout)
            h = _settings_hash(unit, chosen)
            ids = [fit.data.data_id(self.layer)] + ([] if holdout else [score.data.data_id(self.layer)])
            data_id = (ids[0] if holdout else fingerprint(ids)) if all(ids) else ""
            cached = self._cached(data_id, score_name, unit, h)
            if cached is not None:
                rows += cached
                continue
            if self.progress:
                where = f"{score_name} hold-out" if holdout else f"{fit_name} -> {score_name}"
                self.progress(f"{group.label}layer {self.layer}, {unit.name} probe ({where})")
            ctx = _Context(group, self.layer, score_name, unit, h, json.dumps(chosen, sort_keys=True), data_id)
            new = _compute_pair_unit(unit, ctx, self.settings, fit, None if holdout else score)
            self.cache.add(new)
            rows += new
        return rows


def _evaluate_group(group: Group, settings: MetricSettings, layers, cache: MetricsCache, recompute: bool, progress) -> list[dict]:
    """Rows of every requested metric for every layer of one group, saving the cache per layer."""
    units = [UNITS[u] for g in settings.metrics for u in GROUPS[g]]
    split_units = [u for u in units if not u.pair]
    pair_units = [u for u in units if u.pair]
    first = group.splits[group.eval_split or group.train_split or next(iter(group.splits))]
    layers = list(layers) if layers else first.layers
    for data in group.splits.values():
        for layer in layers:
            data.check_layer(layer)  # LayerError naming the closest layer
    if group.train_split and group.eval_split and pair_units:
        check_pair(group.splits[group.train_split], group.splits[group.eval_split], layers)
    cluster_splits = [s for s in group.splits if settings.cluster_splits is None or s in settings.cluster_splits]
    rows: list[dict] = []
    for layer in layers:
        job = _LayerJob(group, layer, settings, cache, recompute, progress)
        if split_units:
            for split in cluster_splits:
                rows += job.split_rows(split, split_units)
        if pair_units:
            rows += job.pair_rows(pair_units)
        cache.save()
    return rows


def _finish(rows: list[dict], layer_order: Sequence[str], split_order: Sequence[str]) -> pd.DataFrame:
    """The rows as a table sorted by run, epoch, layer (bank order), split (train first), metric."""
    frame = coerce(pd.DataFrame(rows, columns=COLUMNS))
    if frame.empty:
        return frame
    ranks = {
        "layer": {layer: i for i, layer in enumerate(layer_order)},
        "split": {split: i for i, split in enumerate(split_order)},
        "metric": {m: i for i, m in enumerate(METRIC_ORDER)},
    }
    for col, rank in ranks.items():
        frame[f"_{col}"] = frame[col].map(lambda x, rank=rank: rank.get(x, len(rank)))
    frame["_epoch"] = frame["epoch"].fillna(-1)
    keys = ["run", "method", "_epoch", "_layer", "layer", "_split", "split", "_metric"]
    frame = frame.sort_values(keys, kind="stable")
    return frame.drop(columns=[f"_{c}" for c in ranks] + ["_epoch"]).reset_index(drop=True)


def evaluate_groups(
    groups: Sequence[Group],
    settings: MetricSettings,
    layers: Sequence[str] | None = None,
    cache_path: str | os.PathLike | None = None,
    recompute: bool = False,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Run the suite over prepared groups; the engine under :func:`evaluate` and :func:`evaluate_arrays`."""
    cache = MetricsCache(cache_path, pair_units=frozenset(u.name for u in UNITS.values() if u.pair))
    rows: list[dict] = []
    layer_order: list[str] = []
    split_order: list[str] = []
    for group in groups:
        rows += _evaluate_group(group, settings, layers, cache, recompute, progress)
        roles = [group.train_split, group.eval_split, *group.splits]
        split_order = list(dict.fromkeys(split_order + [s for s in roles if s]))
        for split in group.splits.values():
            layer_order = list(dict.fromkeys(layer_order + split.layers))
    frame = _finish(rows, layer_order, split_order)
    frame.attrs["cache"] = None if cache_path is None else str(cache_path)
    return frame


# -- entry points ---------------------------------------------------------------------------------

def _open(source) -> FeatureBank:
    return source if isinstance(source, FeatureBank) else FeatureBank.open(source)


def default_cache_path(source) -> Path:
    """Where :func:`evaluate` caches results for ``source`` (a bank, bank path or run directory)."""
    if isinstance(source, FeatureBank):
        return source.path.parent / f"{source.path.name}.{CACHE_NAME}"
    path = Path(source)
    if (path / "meta.json").exists():
        return path.parent / f"{path.name}.{CACHE_NAME}"
    return path / CACHE_NAME


def _settings(settings: MetricSettings | None, overrides: dict) -> MetricSettings:
    settings = settings or MetricSettings()
    if overrides:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(MetricSettings)}
        if unknown:
            raise MetricsError(f"Unknown setting(s) {', '.join(sorted(unknown))}; see MetricSettings for the options.")
        settings = settings.replace(**overrides)
    return settings


def evaluate(
    source,
    settings: MetricSettings | None = None,
    *,
    train=None,
    layers: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    epochs: Sequence[int] | None = None,
    cache: bool | str | os.PathLike | None = True,
    recompute: bool = False,
    progress: Callable[[str], None] | None = None,
    **overrides,
) -> pd.DataFrame:
    """Compute the metric suite for a feature bank or a run directory; returns the tidy table.

    ``source`` is a :class:`FeatureBank`, the path of one, or a run directory holding banks at
    ``features/<split>/epoch_XXXX/`` (train and test banks pair by epoch: probes train on
    ``train`` and score on ``test``). A single bank is scored on its own (probes on a stratified
    hold-out) unless ``train`` names the train bank of the same checkpoint. ``layers``,
    ``splits`` and ``epochs`` restrict the work. ``cache``: True = the default file
    (:func:`default_cache_path`), a path, or False. Keyword ``overrides`` set
    :class:`MetricSettings` fields, e.g. ``evaluate(bank, k=20, distance='euclidean')``.
    """
    settings = _settings(settings, overrides)
    groups: list[Group] = []
    is_bank = isinstance(source, FeatureBank) or (Path(source) / "meta.json").exists()
    if is_bank:
        bank = _open(source)
        split = BankSplit(bank).split
        banks = {split: bank}
        if train is not None:
            train_bank = _open(train)
            if train_bank.path.resolve() == bank.path.resolve():
                raise MetricsError(
                    f"train= is the same bank as the one evaluated ({bank.path}); pass the train "
                    "split's bank, or leave train out for a hold-out split."
                )
            banks = {"train": train_bank, (split if split != "train" else "test"): bank}
        if splits:
            banks = {s: b for s, b in banks.items() if s in splits}
            if not banks:
                raise MetricsError(f"splits={list(splits)} leaves none of the banks given ({split}).")
        in_run = bank.path.parent.parent.name == "features"  # <run>/features/<split>/<epoch>
        groups.append(group_from_banks(banks, run_hint=bank.path.parents[2].name if in_run else ""))
    else:
        path = Path(source)
        if not path.exists():
            raise FeatureBankError(f"{path} does not exist; pass a feature bank directory or a run directory.")
        found = find_banks(path)
        if not found:
            raise FeatureBankError(
                f"{path} is neither a feature bank (no meta.json) nor a run directory with banks "
                "under features/<split>/epoch_XXXX/. Extract features first with `clusterprobe extract`."
            )
        for by_split in found.values():
            if splits:
                by_split = {s: p for s, p in by_split.items() if s in splits}
            if not by_split:
                continue
            group = group_from_banks({s: FeatureBank.open(p) for s, p in by_split.items()}, run_hint=path.name)
            if epochs is not None and group.epoch not in set(epochs):
                continue
            groups.append(group)
        if not groups:
            raise MetricsError(f"No banks in {path} match splits={splits} and epochs={epochs}.")
    if cache is True:
        cache_path = default_cache_path(source)
    elif cache in (False, None):
        cache_path = None
    else:
        cache_path = Path(cache)
    return evaluate_groups(groups, settings, layers, cache_path, recompute, progress)


def evaluate_arrays(
    X_train,
    y_train=None,
    X_test=None,
    y_test=None,
    settings: MetricSettings | None = None,
    *,
    layer: str = "features",
    run: str = "",
    method: str = "",
    epoch: int | None = None,
    cache: str | os.PathLike | None = None,
    recompute: bool = False,
    progress: Callable[[str], None] | None = None,
    **overrides,
) -> pd.DataFrame:
    """The same suite on in-memory arrays (a notebook's features), returning the tidy table.

    ``X_train`` (n, d) with labels ``y_train`` (n,) or None; optional ``X_test`` (m, d) and
    ``y_test`` (m,) to score probes on. Each X may also be a dict ``{layer: array}`` to evaluate
    several layers at once. Nothing is cached unless ``cache`` names a CSV file; the arrays are
    then hashed so that other data never reuses those rows.
    """
    settings = _settings(settings, overrides)
    as_dict = lambda X: dict(X) if isinstance(X, Mapping) else {layer: X}  # noqa: E731
    hash_data = cache is not None
    splits: dict[str, SplitData] = {"train": ArraySplit(as_dict(X_train), y_train, "train", hash_data)}
    if X_test is not None:
        splits["test"] = ArraySplit(as_dict(X_test), y_test, "test", hash_data)
        check_pair(splits["train"], splits["test"], splits["train"].layers)
    elif y_test is not None:
        raise MetricsError("y_test was given without X_test; pass both or neither.")
    train, evaluation = pick_roles(splits)
    group = Group(run, method, epoch, splits, train, evaluation if X_test is not None else None, "")
    return evaluate_groups([group], settings, None, cache, recompute, progress)
