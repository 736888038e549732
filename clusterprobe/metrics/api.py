"""The suite's entry points: feature banks / run directories (:func:`evaluate`) or in-memory arrays
(:func:`evaluate_arrays`) in, one tidy pandas table out, cached incrementally.

The table has one row per (run, method, epoch, layer, split, metric) with ``value``, ``std``
(over k-means seeds where there are seeds), ``n`` (samples scored) and the settings that
produced it: the fields of :class:`~clusterprobe.metrics.table.MetricRow`, in that order. The
metrics are listed in :mod:`clusterprobe.metrics.registry`.

Defaults are this project's choices (the paper does not publish its k-means settings): k = the
number of classes, L2-normalised features, cosine silhouette, 3 seeds, L-BFGS linear probe,
weighted-cosine 20-NN. Each row records the choice.

Caching: rows are stored in a CSV (``<run>/metrics.csv`` for a run directory,
``<bank>.metrics.csv`` beside a single bank, or a file you name) keyed by the data's identity
(bank metadata and file stamps, or a hash of arrays) and a hash of exactly the settings each
metric depends on (plus the engine version). Asking again computes only what is missing;
changed settings or re-extracted features are never answered from the cache.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Sequence, Union

import pandas as pd

from ..bank import FeatureBank
from ..errors import MetricsError
from ..runs import METRICS_NAME
from .engine import agreed, evaluate_groups, suite_team
from .settings import MetricSettings, settings_with
from .sources import group_from_arrays, groups_from_source

#: What ``progress`` accepts: False/None (silent), True (a line per step on stderr) or a callable.
ProgressArg = Union[bool, None, Callable[[str], None]]
#: What ``cache`` accepts: True (the default file), False/None (no cache) or a path.
CacheArg = Union[bool, None, str, os.PathLike]


def default_cache_path(source) -> Path:
    """Where :func:`evaluate` caches results for ``source`` (a bank, bank path or run directory).

    ``<run>/metrics.csv`` for a run directory, ``<bank>.metrics.csv`` beside a single bank.
    """
    if isinstance(source, FeatureBank):
        return source.path.parent / f"{source.path.name}.{METRICS_NAME}"
    path = Path(source)
    if (path / "meta.json").exists():
        return path.parent / f"{path.name}.{METRICS_NAME}"
    return path / METRICS_NAME


def _progress_function(progress: ProgressArg) -> Callable[[str], None] | None:
    """The callable behind a ``progress`` argument (None = silent)."""
    if progress is None or progress is False:
        return None
    if progress is True:
        return lambda message: print(message, file=sys.stderr, flush=True)
    if callable(progress):
        return progress
    raise MetricsError(
        f"progress must be True (a line per step on stderr), False (silent) or a callable taking "
        f"each message; got {progress!r}."
    )


def _cache_path(cache: CacheArg, default: Callable[[], Path] | None) -> Path | None:
    """The file behind a ``cache`` argument (None = no cache); ``default`` gives True's file."""
    if cache is None or cache is False:
        return None
    if cache is True:
        if default is None:
            raise MetricsError(
                "cache=True: in-memory arrays have no default cache file. Pass cache= the path of a "
                "CSV file to cache results in (e.g. cache='features.metrics.csv'), or cache=False."
            )
        return default()
    if isinstance(cache, (str, os.PathLike)):
        return Path(cache)
    raise MetricsError(f"cache must be True (the default file), False (no cache) or a path; got {cache!r}.")


def evaluate(
    source,
    settings: MetricSettings | None = None,
    *,
    train=None,
    layers: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    epochs: Sequence[int] | None = None,
    cache: CacheArg = True,
    recompute: bool = False,
    progress: ProgressArg = False,
    distributed: bool | None = None,
    **overrides,
) -> pd.DataFrame:
    """Compute the metric suite for a feature bank or a run directory; returns the tidy table.

    Parameters:
        source: a :class:`FeatureBank`, the path of one, or a run directory holding banks at
            ``features/<split>/epoch_XXXX/`` (train and test banks pair by epoch: probes train
            on ``train`` and score on ``test``). A single bank is scored on its own (probes on
            a stratified hold-out) unless ``train`` names the train bank of the same checkpoint.
        settings: a :class:`MetricSettings` (default: the defaults); keyword ``overrides`` set
            its fields, e.g. ``evaluate(bank, k=20, distance='euclidean')``.
        layers, splits, epochs: restrict the work (default: everything present).
        cache: True (default) = the file :func:`default_cache_path` gives, False or None = no
            cache, or the path of a CSV file.
        recompute: ignore cached values (and overwrite them).
        progress: False (default, silent), True (one plain line per step on stderr), or a
            callable receiving each message string.
        distributed: None (default, auto) = share the work among the ranks of the
            torch.distributed process group when one is initialised with several ranks (under
            ``torchrun``, after :func:`clusterprobe.distributed.init_distributed`, which also
            gives each rank its own GPU), else compute
            in this process; True = require such a group; False = this process alone, whatever
            group exists. With a group, every rank must make the same call on the same data
            (called on rank 0 alone it waits for the others: pass False there):
            rank 0 computes k-means, probes, kNN, RankMe and the other scores, reads and writes
            the cache and reports progress; the exact silhouettes are computed by all ranks, each
            taking a share of the rows, with rank 0's labels (k-means's included); every rank
            returns rank 0's table, equal to one process's (silhouettes to rounding). A rank that
            fails before a shared step makes every rank raise (the others name it); one that dies
            inside the silhouettes leaves the others waiting until torchrun stops them or the
            group's timeout (``init_distributed(timeout_s=...)``, 30 min) passes.

    Returns:
        The tidy table (columns of :class:`~clusterprobe.metrics.table.MetricRow`), sorted by
        run, epoch, layer (bank order), split (train first) and metric.

    Raises:
        MetricsError: bad settings, arguments, labels or k; FeatureBankError, LayerError,
        NonFiniteFeaturesError for unusable banks.
    """
    team = suite_team(distributed)
    with agreed(team, "prepare the metrics suite"):
        settings = settings_with(settings, overrides)
        report = _progress_function(progress)
        cache_path = _cache_path(cache, lambda: default_cache_path(source))
        groups = groups_from_source(source, train=train, splits=splits, epochs=epochs)
    return evaluate_groups(groups, settings, layers=layers, cache_path=cache_path, recompute=recompute,
                           progress=report, team=team)


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
    cache: CacheArg = False,
    recompute: bool = False,
    progress: ProgressArg = False,
    distributed: bool | None = None,
    **overrides,
) -> pd.DataFrame:
    """The same suite on in-memory arrays (a notebook's features), returning the tidy table.

    Parameters:
        X_train: (n, d) features, or a dict ``{layer: (n, d) array}`` to evaluate several layers.
        y_train: (n,) integer labels, or None (then only label-free metrics run).
        X_test, y_test: optional (m, d) features (same layers) and (m,) labels that probes score
            on; without them probes score on a stratified hold-out of the train arrays.
        settings, overrides: as for :func:`evaluate`.
        layer: the layer name of a plain array. run, method, epoch: recorded in every row.
        cache: False or None (default) = no cache, or the path of a CSV file (the arrays are then
            hashed so that other data never reuses those rows). True is an error: arrays have no
            default location.
        recompute: ignore cached values (and overwrite them).
        progress: False (default, silent), True (one plain line per step on stderr), or a
            callable receiving each message string.
        distributed: as for :func:`evaluate` (None = auto: the torch.distributed group if
            one is initialised with several ranks).

    Returns:
        The tidy table, as :func:`evaluate`'s.

    Raises:
        MetricsError: bad settings, arguments, shapes, labels or k; NonFiniteFeaturesError for
        NaN or infinite features.
    """
    team = suite_team(distributed)
    with agreed(team, "prepare the metrics suite"):
        settings = settings_with(settings, overrides)
        report = _progress_function(progress)
        cache_path = _cache_path(cache, None)
        group = group_from_arrays(X_train, y_train, X_test, y_test, layer=layer, run=run, method=method,
                                  epoch=epoch, hash_data=cache_path is not None)
    return evaluate_groups([group], settings, cache_path=cache_path, recompute=recompute, progress=report,
                           team=team)
