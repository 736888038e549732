"""Planning and computing the suite: which units each (layer, split) needs, what the cache already
holds, and the computation of the rest, as :class:`~clusterprobe.metrics.table.MetricRow` rows.

Inputs arrive validated (:mod:`.sources` checks features and labels, :class:`MetricSettings`
every option), so the metric modules' internal functions are called directly, without checking
again. Per-split units (clustering, silhouette, RankMe) share one k-means run per (layer,
split); probe units fit on the train split and score on the eval split (or on a stratified
hold-out when there is only one split).

Under torch.distributed (:func:`suite_team`) rank 0 runs everything above and the other ranks
follow it: each exact silhouette computation is shared by all ranks (see :class:`_Team`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from ..devices import resolve_device
from . import _torch_search, clustering, probes, silhouette, spectra
from ._validation import MetricsError, check_k, check_two_classes
from .cache import MetricsCache, pair_data_id, settings_hash, unit_settings
from .registry import METRIC_ORDER, UNITS, Unit
from .settings import MetricSettings
from .sources import Group, SplitData, check_pair
from .table import MetricRow, to_frame

Progress = Callable[[str], None]


@dataclass
class _Context:
    """Where the rows of one unit go: group, layer, split, and the keys they are cached under."""

    group: Group
    layer: str
    split: str
    unit: Unit
    settings_hash: str
    settings_json: str
    data_id: str

    def row(self, metric: str, value, std=math.nan, n=None, **extra) -> MetricRow:
        return MetricRow(
            run=self.group.run, method=self.group.method, epoch=self.group.epoch, layer=self.layer,
            split=self.split, metric=metric, value=value, std=std, n=n, unit=self.unit.name,
            settings=self.settings_json, settings_hash=self.settings_hash, data_id=self.data_id, **extra,
        )


def _skip_rows(group: Group, layer: str, split: str, unit: Unit, reason: str) -> list[MetricRow]:
    ctx = _Context(group, layer, split, unit, "", "", "")
    return [ctx.row(metric, math.nan, note=f"skipped: {reason}") for metric in unit.metrics]


class _SplitWork:
    """Lazily loaded features, labels and k-means results of one (layer, split)."""

    _UNSET = object()

    def __init__(self, data: SplitData, layer: str, settings: MetricSettings, k: int | None,
                 team: "_Team | None" = None, where: tuple = ()):
        self.data, self.layer, self.settings, self.k = data, layer, settings, k
        self.team, self.where = team, where  # where: (group index, split, layer), for the other ranks
        self._X = None
        self._km = None
        self._labels = self._UNSET

    @property
    def X(self) -> np.ndarray:
        """Features (n, d) float32, validated by the split."""
        if self._X is None:
            self._X = self.data.features(self.layer)
        return self._X

    @property
    def labels(self) -> np.ndarray | None:
        """Labels (n,) int64, validated by the split, or None."""
        if self._labels is self._UNSET:
            self._labels = self.data.labels()
        return self._labels

    @property
    def kmeans(self) -> clustering.KMeansResult:
        if self._km is None:
            s = self.settings
            self._km = clustering._kmeans(
                self.X, int(self.k), s.seeds, bool(s.normalize), int(s.kmeans_niter), float(s.kmeans_tol),
                s.kmeans_init, s.device,
            )
        return self._km


def _kmeans_columns(s: MetricSettings, k: int, backend: str = "faiss", km: "clustering.KMeansResult | None" = None) -> dict:
    """The k-means columns of a row; ``backend`` is what ran it (faiss, or torch on a GPU that
    FAISS cannot use: the same algorithm, see :mod:`._torch_search`). ``km``, the clusterings
    the row scores, adds where the k-means++ seeds came from a sample of the rows (the torch
    backend and FAISS's GPU build, beyond 2**18 rows: :func:`~._torch_search.seeding_sample_size`)."""
    seeding = ""
    if km is not None and s.kmeans_init == "k-means++" and (km.backend == "torch" or km.gpu):
        n = km.labels.shape[1]
        m = _torch_search.seeding_sample_size(n, k)
        if m < n:
            seeding = f", seeds from {m:,} of {n:,} rows"
    return {
        "k": k, "normalize": s.normalize, "distance": "cosine" if s.normalize else "euclidean",
        "seeds": ",".join(map(str, s.seeds)),
        "protocol": f"{backend} k-means ({s.kmeans_init}{seeding}, tol {s.kmeans_tol:g}, <= {s.kmeans_niter} iterations"
                    f"{', spherical' if s.normalize else ''})",
    }


# -- computing ----------------------------------------------------------------------------------
def _compute_split_units(work: _SplitWork, units: list[tuple[Unit, _Context]]) -> list[MetricRow]:
    """Compute the per-split units in ``units`` on one (layer, split); returns rows."""
    s = work.settings
    rows: list[MetricRow] = []
    by_name = {unit.name: ctx for unit, ctx in units}
    n = work.X.shape[0]
    if "rankme" in by_name:
        rows.append(by_name["rankme"].row("rankme", spectra._rankme(work.X), n=n, normalize=False))
    # k-means scores against the classes (nmi, ari, cluster_acc) and label-free ones (db, ch)
    for family, score in ((clustering.AGREEMENT, lambda names: clustering._agreement(work.labels, work.kmeans, names)),
                          (clustering.LABEL_FREE, lambda names: clustering._validity(work.X, work.kmeans, names))):
        names = [name for name in family if name in by_name]
        scores = score(names) if names else {}
        for name in names:
            mean, std = scores[name]
            rows.append(by_name[name].row(name, mean, std, n, **_kmeans_columns(s, work.k, work.kmeans.backend, work.kmeans)))
    if "silhouette_true" in by_name or "silhouette_kmeans" in by_name:
        rows.extend(_silhouette_rows(work, by_name))
    return rows


def _silhouette_rows(work: _SplitWork, by_name: dict[str, _Context]) -> list[MetricRow]:
    s = work.settings
    label_sets, owners = [], []
    if "silhouette_true" in by_name:
        label_sets.append(work.labels)
        owners.append("true")
    if "silhouette_kmeans" in by_name:
        label_sets.extend(list(work.kmeans.labels))
        owners.extend(["kmeans"] * len(work.kmeans.labels))
    # cosine distances ignore row norms; only the Euclidean silhouette depends on normalisation,
    # applied to the rows as they are read (no normalised copy of a bank-sized array)
    normalize = bool(s.normalize and s.distance == "euclidean")
    # a single cluster has no silhouette; the labels' range is checked by the silhouette itself
    usable = [i for i, labels in enumerate(label_sets) if np.unique(labels).size >= 2]
    stats = dict(zip(usable, _silhouette_stats(work, [label_sets[i] for i in usable], normalize)))
    common = {"normalize": s.normalize, "distance": s.distance}
    rows = []
    if "true" in owners:
        ctx, st = by_name["silhouette_true"], stats[0]
        cols = dict(common, protocol="ground-truth labels" + (f", {st.n} sampled" if st.sampled else ""))
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


def _silhouette_stats(work: _SplitWork, label_sets: list[np.ndarray], normalize: bool) -> list:
    """The silhouette statistics of ``label_sets`` on the split's features: in this process, or
    (rank 0 of a team) shared by every rank, each given the very labels rank 0 has."""
    s = work.settings
    if work.team is None:
        return silhouette._stats_multi(work.X, label_sets, s.distance, s.silhouette_sample_size, 0, s.device,
                                       normalize)
    job = _SilhouetteJob(work.where, label_sets, s.distance, s.silhouette_sample_size, s.device, normalize,
                         _probe(work.X))
    return work.team.lead_silhouettes(work.X, job)


def _compute_pair_unit(
    unit: Unit, ctx: _Context, settings: MetricSettings, train: _SplitWork, test: _SplitWork | None
) -> list[MetricRow]:
    """Rows of a probe unit: fit on ``train``, score on ``test`` (or a hold-out when None)."""
    s = settings
    split = probes._split(train.X, train.labels, None if test is None else test.X,
                          None if test is None else test.labels, s.holdout, s.holdout_seed)
    if unit.name == "linear":
        result = probes._linear_probe(split, s.probe, C=s.probe_C, epochs=s.probe_epochs, seed=s.holdout_seed,
                                      device=resolve_device(s.device))
        protocol = f"lbfgs logistic regression, C={s.probe_C:g}, standardised" if s.probe == "lbfgs" else (
            f"reference: Adam, lr 1e-2 -> 1e-6, {s.probe_epochs} epochs, batch 1000")
        cols = {"normalize": False, "distance": ""}
    else:
        k = s.knn_k or probes.KNN_DEFAULT_K[s.knn]
        result = probes._knn_accuracy(split, s.knn, int(k), float(s.knn_temperature), s.device)
        protocol = (f"weighted-cosine, k={k}, T={s.knn_temperature:g}" if s.knn == "weighted-cosine"
                    else f"majority-euclidean, k={k}")
        cols = {"normalize": s.knn == "weighted-cosine", "distance": "cosine" if s.knn == "weighted-cosine" else "euclidean"}
    rows = [ctx.row(f"{unit.name}_top1", result.top1, math.nan, result.n_test, protocol=protocol,
                    evaluation=result.evaluation, **cols)]
    if result.top5 is not None:
        rows.append(ctx.row(f"{unit.name}_top5", result.top5, math.nan, result.n_test, protocol=protocol,
                            evaluation=result.evaluation, **cols))
    return rows


# -- planning -----------------------------------------------------------------------------------
class _LayerJob:
    """Everything asked for one layer of one group: cached rows, skipped rows and new work."""

    def __init__(self, group: Group, layer: str, settings: MetricSettings, cache: MetricsCache, recompute: bool,
                 progress: Progress | None, team: "_Team | None" = None, index: int = 0):
        self.group, self.layer, self.settings = group, layer, settings
        self.cache, self.recompute, self.progress = cache, recompute, progress
        self.team, self.index = team, index  # index: of the group, as the other ranks know it
        self.works: dict[str, _SplitWork] = {}

    def work(self, split: str) -> _SplitWork:
        """Lazily loaded data of one split for this layer (shared by clustering and probes)."""
        if split not in self.works:
            data = self.group.splits[split]
            k = self.settings.k if self.settings.k is not None else data.num_classes()
            self.works[split] = _SplitWork(data, self.layer, self.settings, k, self.team,
                                           (self.index, split, self.layer))
        return self.works[split]

    def _cached(self, data_id: str, split: str, unit: Unit, h: str) -> list[MetricRow] | None:
        if self.recompute:
            return None
        return self.cache.lookup(data_id, self.layer, split, unit.name, h, run=self.group.run,
                                 method=self.group.method, epoch=self.group.epoch)

    def split_rows(self, split: str, units: list[Unit]) -> list[MetricRow]:
        """Per-split metrics (clustering, silhouette, RankMe) of one split."""
        work = self.work(split)
        data, labels = work.data, work.labels
        if labels is not None and any(u.needs_labels for u in units):
            check_two_classes(labels, f"labels of {data.name}")
        resolved = self.settings.resolved(work.k)
        rows, todo = [], []
        for unit in units:
            if unit.needs_labels and labels is None:
                rows += _skip_rows(self.group, self.layer, split, unit, f"{data.name} has no labels")
                continue
            if unit.needs_k and work.k is None:
                rows += _skip_rows(self.group, self.layer, split, unit, "no labels to take k from; pass k")
                continue
            chosen = unit_settings(unit, resolved, holdout=False)
            h = settings_hash(unit, chosen)
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
                shared = (f" (silhouettes over {self.team.world} ranks)"
                          if self.team is not None and any(u.name.startswith("silhouette") for u, _ in todo) else "")
                self.progress(f"{self.group.label}layer {self.layer}, {split}: "
                              f"{', '.join(u.name for u, _ in todo)}{shared}")
            new = _compute_split_units(work, todo)
            self.cache.add(new)
            rows += new
        return rows

    def pair_rows(self, units: list[Unit]) -> list[MetricRow]:
        """Probe metrics: fit on the train split, score on the eval split (or a hold-out)."""
        group = self.group
        holdout = not (group.train_split and group.eval_split)
        fit_name = group.train_split or group.eval_split
        score_name = group.eval_split or group.train_split
        fit, score = self.work(fit_name), self.work(score_name)
        missing = [w.data for w in (fit, score) if w.labels is None]
        if units and not missing:
            for work in (fit, score):
                check_two_classes(work.labels, f"labels of {work.data.name}")
        resolved = self.settings.resolved(None)
        rows = []
        for unit in units:
            if missing:
                rows += _skip_rows(group, self.layer, score_name, unit, f"{missing[0].name} has no labels")
                continue
            chosen = unit_settings(unit, resolved, holdout=holdout)
            h = settings_hash(unit, chosen)
            data_id = pair_data_id(fit.data.data_id(self.layer), None if holdout else score.data.data_id(self.layer))
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


def _evaluate_group(group: Group, settings: MetricSettings, layers, cache: MetricsCache, recompute: bool,
                    progress: Progress | None, cache_errors: list[str], team: "_Team | None" = None,
                    index: int = 0) -> list[MetricRow]:
    """Rows of every requested metric for every layer of one group, saving the cache per layer."""
    units = [UNITS[name] for name in settings.metrics]
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
    rows: list[MetricRow] = []
    for layer in layers:
        job = _LayerJob(group, layer, settings, cache, recompute, progress, team, index)
        if split_units:
            for split in cluster_splits:
                rows += job.split_rows(split, split_units)
        if pair_units:
            rows += job.pair_rows(pair_units)
        if not cache.save() and cache.error and cache.error not in cache_errors:
            cache_errors.append(cache.error)
    return rows


def _finish(rows: list[MetricRow], layer_order: Sequence[str], split_order: Sequence[str]) -> pd.DataFrame:
    """The rows as a table sorted by run, epoch, layer (bank order), split (train first), metric."""
    frame = to_frame(rows)
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
    *,
    layers: Sequence[str] | None = None,
    cache_path: str | os.PathLike | None = None,
    recompute: bool = False,
    progress: Progress | None = None,
    team: "_Team | None" = None,
) -> pd.DataFrame:
    """Run the suite over prepared groups; the engine under ``evaluate`` and ``evaluate_arrays``.

    ``settings`` validated, ``layers`` None for every layer, ``cache_path`` a CSV file or None,
    ``progress`` None or a callable receiving one message per step. Returns the tidy table.

    ``team`` (:func:`suite_team`; None = this process alone): every rank calls this with the same
    groups; rank 0 computes the suite, the others share its silhouettes, and every rank returns
    rank 0's table.
    """
    if team is not None and team.rank != 0:
        return team.follow(groups)
    try:
        frame = _evaluate_groups(groups, settings, layers, cache_path, recompute, progress, team)
    except BaseException as error:
        if team is not None:
            team.abandon(error)
        raise
    if team is not None:
        team.send(("done", frame))
    return frame


def _evaluate_groups(groups, settings, layers, cache_path, recompute, progress, team) -> pd.DataFrame:
    cache = MetricsCache(cache_path)
    cache_errors: list[str] = []
    rows: list[MetricRow] = []
    layer_order: list[str] = []
    split_order: list[str] = []
    for index, group in enumerate(groups):
        rows += _evaluate_group(group, settings, layers, cache, recompute, progress, cache_errors, team, index)
        roles = [group.train_split, group.eval_split, *group.splits]
        split_order = list(dict.fromkeys(split_order + [s for s in roles if s]))
        for split in group.splits.values():
            layer_order = list(dict.fromkeys(layer_order + split.layers))
    frame = _finish(rows, layer_order, split_order)
    frame.attrs["cache"] = None if cache_path is None else str(cache_path)
    # why new rows could not be saved (None: everything computed is in the cache file)
    frame.attrs["cache_error"] = cache_errors[0] if cache_errors else None
    return frame


# -- several processes --------------------------------------------------------------------------
def suite_team(distributed: bool | None) -> "_Team | None":
    """The ranks that compute one suite together, or None for this process alone.

    ``distributed``: None (auto) = the torch.distributed process group when one is initialised
    with more than one rank; True = that group, an error without one; False = this process
    alone, whatever group exists (each process then computes everything itself).
    """
    if distributed is not None and not isinstance(distributed, (bool, np.bool_)):
        raise MetricsError(f"distributed must be None (auto), True or False; got {distributed!r}.")
    import torch.distributed as dist

    grouped = dist.is_available() and dist.is_initialized()
    if distributed is not None and bool(distributed) and not grouped:
        raise MetricsError(
            "distributed=True needs a torch.distributed process group: start the processes with torchrun "
            "and call clusterprobe.distributed.init_distributed() (or torch.distributed.init_process_group) "
            "first, or leave distributed=None to use a group only when there is one."
        )
    if (distributed is not None and not distributed) or not grouped or dist.get_world_size() == 1:
        return None
    return _Team()


@contextlib.contextmanager
def agreed(team: "_Team | None", step: str):
    """Run the block on every rank, then let all ranks learn whether it failed anywhere: the rank
    that failed raises its own error, the others a :class:`MetricsError` naming it (instead of
    waiting for it in the next collective). Nothing more than the block in one process."""
    if team is None:
        yield
        return
    try:
        yield
    except Exception as error:
        team.check(error, step)
        raise
    team.check(None, step)


@dataclass
class _SilhouetteJob:
    """What rank 0 tells the others to compute: the silhouettes of ``label_sets`` on the features
    of (group index, split, layer) ``where``, which every rank reads itself."""

    where: tuple
    label_sets: list
    distance: str
    sample_size: int | None
    device: str
    normalize: bool
    probe: tuple


def _probe(X) -> tuple:
    """A cheap identity of features: shape, dtype and the float64 sum of up to 1,024 rows spread
    over them; ranks whose data differs would otherwise give a silently wrong silhouette."""
    n = X.shape[0]
    rows = np.asarray(X[:: max(1, n // 1024)], dtype=np.float64)
    return (tuple(X.shape), str(X.dtype), float(rows.sum()))


class _Team:
    """The ranks of a torch.distributed group computing one suite together.

    Rank 0 leads: it plans, reads and writes the cache, runs k-means and every other unit, and
    reports progress, exactly as one process would. The exact silhouettes, the O(n^2 d) part,
    are computed by all ranks: rank 0 broadcasts each job (with its labels, k-means's included, so
    no rank ever clusters on its own), each rank reads the features itself and takes a share of
    the rows (``distributed=True`` of :mod:`.silhouette`). At the end rank 0 broadcasts the table,
    which every rank returns; if rank 0 fails, the others raise a :class:`MetricsError` saying so.
    """

    def __init__(self):
        import torch.distributed as dist

        self.dist = dist
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        nccl = dist.get_backend() == "nccl"
        self.device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        self.busy = False  # rank 0 is inside a collective the others may be waiting in
        self.stopped = False  # every rank knows the suite has stopped

    # messages from rank 0
    def send(self, message: tuple) -> None:
        self.busy = True
        self.dist.broadcast_object_list([message], src=0)
        self.busy = False

    def receive(self) -> tuple:
        box = [None]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def abandon(self, error: BaseException) -> None:
        """Rank 0 failed outside any collective: tell the other ranks, waiting for its next
        message, to stop too (when it failed inside one, they fail there or time out)."""
        if self.busy or self.stopped:
            return
        self.stopped = True
        try:
            self.send(("failed", f"{type(error).__name__}: {error}"))
        except Exception:  # noqa: BLE001 - rank 0's own error matters more
            pass

    def check(self, failure: BaseException | None, step: str) -> None:
        """Every rank says whether it failed ``step``; raises on all of them if one did."""
        flags = torch.zeros(self.world, dtype=torch.int32, device=self.device)
        flags[self.rank] = int(failure is not None)
        self.busy = True
        self.dist.all_reduce(flags)
        self.busy = False
        failed = [str(r) for r in range(self.world) if int(flags[r])]
        if failed:
            self.stopped = True
        if failure is not None:
            raise failure
        if failed:
            raise MetricsError(
                f"Rank {', '.join(failed)} could not {step}; rank {self.rank} stops with "
                f"{'it' if len(failed) == 1 else 'them'} (the error on rank {failed[0]} says why)."
            )

    # the silhouettes
    def lead_silhouettes(self, X, job: _SilhouetteJob) -> list:
        self.send(("silhouette", job))
        self.check(None, self._reading(job))
        return self._silhouettes(X, job)

    def _silhouettes(self, X, job: _SilhouetteJob) -> list:
        self.busy = True  # left set if it fails: the others may be inside its collectives
        stats = silhouette._stats_multi(X, job.label_sets, job.distance, job.sample_size, 0, job.device,
                                        job.normalize, distributed=True)
        self.busy = False
        return stats

    @staticmethod
    def _reading(job: _SilhouetteJob) -> str:
        _, split, layer = job.where
        return f"read the features of layer {layer!r}, split {split!r} for the silhouettes"

    def follow(self, groups: Sequence[Group]) -> pd.DataFrame:
        """The other ranks: join rank 0's silhouettes until it sends the table (or its failure)."""
        while True:
            kind, payload = self.receive()
            if kind == "done":
                return payload
            if kind == "failed":
                raise MetricsError(f"Rank 0 stopped the metrics suite ({payload}); rank {self.rank} stops with it.")
            X, failure = None, None
            try:
                index, split, layer = payload.where
                X = groups[index].splits[split].features(layer)
                if _probe(X) != payload.probe:
                    raise MetricsError(
                        f"Rank {self.rank} has other features than rank 0 for layer {layer!r}, split {split!r} "
                        f"(shape, dtype or values differ): every rank must evaluate the same data."
                    )
            except Exception as error:  # noqa: BLE001 - told to every rank, then re-raised here
                failure = error
            self.check(failure, self._reading(payload))
            self._silhouettes(X, payload)
