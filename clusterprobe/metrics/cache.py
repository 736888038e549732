"""The incremental metrics cache: its keys and its CSV file.

Each row carries ``unit`` (the piece of work that produced it), ``settings_hash`` (a hash of
exactly the settings that unit depends on, plus the engine version) and ``data_id`` (identity
of the features and labels). A lookup needs all three to match, so changed settings or changed
data are recomputed, never answered from the file. Saving re-reads the file, replaces rows that
were recomputed and drops rows computed on data that has since changed, all under the file's
lock, so two processes evaluating into one table (two epochs of a run on two GPUs) keep each
other's rows.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pandas as pd

from ..errors import LockedError, OutputPathError
from ..io import atomic_write, exclusive_lock, fingerprint
from .registry import PAIR_UNITS, Unit
from .table import COLUMNS, STR_COLUMNS, MetricRow, from_frame, missing, to_frame

__all__ = ["COLUMNS", "ENGINE_VERSION", "MetricsCache", "pair_data_id", "settings_hash", "unit_settings"]

#: How long a save waits for another process's save of the same file (a save takes well under
#: a second; the lock is released by the kernel if its holder dies).
LOCK_WAIT_S = 120.0

#: Part of every settings hash: bump it when a change of code changes values.
ENGINE_VERSION = "1"


# -- keys -------------------------------------------------------------------------------------
def unit_settings(unit: Unit, resolved: dict, holdout: bool) -> dict:
    """The settings ``unit`` depends on: what its cache key hashes and its rows record.

    ``resolved`` is :meth:`MetricSettings.resolved`; ``holdout`` says a probe scores on a
    hold-out of its train split (whose fraction and seed then matter too).
    """
    keys = list(unit.keys)
    if unit.pair and holdout:
        keys += ["holdout", "holdout_seed"]
    chosen = {key: resolved[key] for key in keys}
    if unit.name == "linear" and resolved["probe"] == "lbfgs":
        chosen.pop("probe_epochs")  # only the reference protocol has epochs
    if unit.name == "linear" and resolved["probe"] == "reference":
        # the reference protocol draws its initialisation and batch order with holdout_seed,
        # with or without a hold-out
        chosen["holdout_seed"] = resolved["holdout_seed"]
    if unit.name == "knn" and resolved["knn"] != "weighted-cosine":
        chosen.pop("knn_temperature")
    return chosen


def settings_hash(unit: Unit, chosen: dict) -> str:
    """Cache key of a unit's settings; the engine version invalidates results of older code."""
    return fingerprint({"engine": ENGINE_VERSION, "unit": unit.name, "settings": chosen})


def pair_data_id(fit_id: str, score_id: str | None) -> str:
    """Identity of the data a probe saw: its train split's (hold-out, ``score_id`` None) or the
    pair's; empty (never cached) when either is unknown."""
    ids = [fit_id] + ([] if score_id is None else [score_id])
    if not all(ids):
        return ""
    return ids[0] if score_id is None else fingerprint(ids)


def _row_key(row: MetricRow) -> tuple:
    """Which result a row is: the same key with another settings hash is another result."""
    epoch = "" if missing(row.epoch) else int(row.epoch)
    return (row.run, row.method, epoch, row.layer, row.split, row.unit, row.settings_hash)


def _data_key(row: MetricRow) -> tuple:
    """Rows sharing this key were computed on the same data (one split, or one train/test pair)."""
    kind = "pair" if row.unit in PAIR_UNITS else "split"
    return _row_key(row)[:5] + (kind,)


def _lookup_key(row: MetricRow) -> tuple:
    # run, method and epoch too: the same data evaluated under other labels (arrays passed again
    # with another run=/epoch=) must not come back with the labels of the rows cached first
    return (row.data_id,) + _row_key(row)


# -- the file ---------------------------------------------------------------------------------
class MetricsCache:
    """Rows already computed, read from and written to one CSV file (or kept in memory only)."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path is not None else None
        self._index: dict[tuple, list[MetricRow]] = {}
        for row in self._read():
            self._index.setdefault(_lookup_key(row), []).append(row)
        self.new: list[MetricRow] = []
        #: Why the last save could not write the file (None: it wrote, or had nothing to write).
        self.error: str | None = None

    def _read(self) -> list[MetricRow]:
        if self.path is None or not self.path.exists():
            return []
        try:
            # only empty cells are missing: pandas' default NA strings would turn a run, method or
            # layer named 'None', 'NA', 'null' or 'nan' into '' (never found again, or relabelled)
            frame = pd.read_csv(self.path, dtype={c: str for c in STR_COLUMNS}, keep_default_na=False,
                                na_values=[""])
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError, OSError) as exc:
            warnings.warn(f"Ignoring the unreadable metrics cache {self.path} ({exc}); it will be rewritten.")
            return []
        if not set(COLUMNS) <= set(frame.columns):
            warnings.warn(f"Ignoring {self.path}: it is not a clusterprobe metrics table (columns differ).")
            return []
        return from_frame(frame)

    def lookup(self, data_id: str, layer: str, split: str, unit: str, settings_hash: str, *, run: str = "",
               method: str = "", epoch: int | None = None) -> list[MetricRow] | None:
        """Cached rows for this exact data and settings, labelled ``run``, ``method``, ``epoch``, or None."""
        if not data_id:
            return None
        epoch = "" if missing(epoch) else int(epoch)
        return self._index.get((data_id, run, method, epoch, layer, split, unit, settings_hash))

    def add(self, rows: list[MetricRow]) -> None:
        self.new.extend(rows)
        for row in rows:
            self._index.setdefault(_lookup_key(row), []).append(row)

    def save(self) -> bool:
        """Merge new rows into the file (re-read first), dropping rows they supersede.

        The re-read and the write happen under the file's lock (:func:`~clusterprobe.io.exclusive_lock`
        on ``.<name>.lock`` beside it): a concurrent save of another process waits for this one
        and then merges into what it wrote, instead of overwriting it with its own older read.

        Returns whether the file was written. When it cannot be (a read-only folder, a full
        disk, another process holding the lock for longer than :data:`LOCK_WAIT_S`), the rows
        stay unsaved, :attr:`error` says why and a warning is issued.
        """
        if self.path is None or not self.new:
            return False
        try:
            with exclusive_lock(self.path, wait=LOCK_WAIT_S, what=f"the metrics table {self.path}"):
                existing = self._read()
                replaced = {_row_key(r) for r in self.new}
                current = {_data_key(r): r.data_id for r in self.new}
                kept = [
                    r for r in existing
                    if _row_key(r) not in replaced  # recomputed now
                    and current.get(_data_key(r), r.data_id) == r.data_id  # data changed since
                ]
                text = to_frame(kept + self.new).to_csv(index=False)
                atomic_write(self.path, lambda f: f.write(text), mode="w")
        except (OSError, OutputPathError, LockedError) as exc:
            # the lock file's OutputPathError keeps the operating system's error as its context
            cause = exc.__context__ if isinstance(exc, OutputPathError) else exc
            reason = getattr(cause, "strerror", None) or exc
            self.error = f"{self.path} could not be written ({reason})"
            warnings.warn(f"Could not write the metrics cache {self.path} ({exc}); results are not cached.")
            self.new = []
            return False
        self.error = None
        self.new = []
        return True
