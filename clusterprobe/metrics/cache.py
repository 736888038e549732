"""The tidy metrics table on disk: columns, dtypes, and the incremental cache file (CSV).

Each row carries ``unit`` (the piece of work that produced it), ``settings_hash`` (a hash of
exactly the settings that unit depends on, plus the engine version) and ``data_id`` (identity
of the features and labels). A lookup needs all three to match, so changed settings or changed
data are recomputed, never answered from the file. Saving re-reads the file, replaces rows that
were recomputed and drops rows computed on data that has since changed.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import pandas as pd

from ..io import atomic_write

COLUMNS = [
    "run", "method", "epoch", "layer", "split", "metric", "value", "std", "n",
    "k", "normalize", "distance", "seeds", "protocol", "evaluation",
    "unit", "settings", "settings_hash", "data_id", "note",
]
STR_COLUMNS = ["run", "method", "layer", "split", "metric", "distance", "seeds", "protocol",
               "evaluation", "unit", "settings", "settings_hash", "data_id", "note"]


def _missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def coerce(frame: pd.DataFrame) -> pd.DataFrame:
    """Put columns in order with stable dtypes (fresh rows and rows read back from CSV alike)."""
    frame = frame.reindex(columns=COLUMNS)
    for col in STR_COLUMNS:
        frame[col] = frame[col].astype(object).where(frame[col].notna(), "").astype(str)
    for col in ("epoch", "n", "k"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("Int64")
    for col in ("value", "std"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
    frame["normalize"] = frame["normalize"].map(
        lambda v: pd.NA if _missing(v) else (str(v).lower() == "true" if isinstance(v, str) else bool(v))
    ).astype("boolean")
    return frame


def _row_key(row) -> tuple:
    """Which result a row is: the same key with another settings hash is another result."""
    epoch = "" if _missing(row["epoch"]) else int(row["epoch"])
    return (row["run"], row["method"], epoch, row["layer"], row["split"], row["unit"], row["settings_hash"])


class MetricsCache:
    """Rows already computed, read from and written to one CSV file (or kept in memory only)."""

    def __init__(self, path: str | os.PathLike | None, pair_units: frozenset[str] = frozenset()):
        self.path = Path(path) if path is not None else None
        self.pair_units = pair_units
        self._index: dict[tuple, list[dict]] = {}
        for row in self._read():
            self._index.setdefault(self._lookup_key(row), []).append(row)
        self.new: list[dict] = []

    def _data_key(self, row) -> tuple:
        """Rows sharing this key were computed on the same data (one split, or one train/test pair)."""
        kind = "pair" if row["unit"] in self.pair_units else "split"
        return _row_key(row)[:5] + (kind,)

    @staticmethod
    def _lookup_key(row) -> tuple:
        return (row["data_id"], row["layer"], row["split"], row["unit"], row["settings_hash"])

    def _read(self) -> list[dict]:
        if self.path is None or not self.path.exists():
            return []
        try:
            frame = pd.read_csv(self.path, dtype={c: str for c in STR_COLUMNS}, keep_default_na=True)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
            warnings.warn(f"Ignoring the unreadable metrics cache {self.path} ({exc}); it will be rewritten.")
            return []
        if not set(COLUMNS) <= set(frame.columns):
            warnings.warn(f"Ignoring {self.path}: it is not a clusterprobe metrics table (columns differ).")
            return []
        return coerce(frame).to_dict("records")

    def lookup(self, data_id: str, layer: str, split: str, unit: str, settings_hash: str) -> list[dict] | None:
        """Cached rows for this exact data and settings, or None."""
        if not data_id:
            return None
        return self._index.get((data_id, layer, split, unit, settings_hash))

    def add(self, rows: list[dict]) -> None:
        self.new.extend(rows)
        for row in rows:
            self._index.setdefault(self._lookup_key(row), []).append(row)

    def save(self) -> None:
        """Merge new rows into the file (re-read first), dropping rows they supersede."""
        if self.path is None or not self.new:
            return
        existing = self._read()
        replaced = {_row_key(r) for r in self.new}
        current = {self._data_key(r): r["data_id"] for r in self.new}
        kept = [
            r for r in existing
            if _row_key(r) not in replaced  # recomputed now
            and current.get(self._data_key(r), r["data_id"]) == r["data_id"]  # data changed since
        ]
        frame = coerce(pd.DataFrame(kept + self.new, columns=COLUMNS))
        text = frame.to_csv(index=False)
        try:
            atomic_write(self.path, lambda f: f.write(text), mode="w")
        except OSError as exc:
            warnings.warn(f"Could not write the metrics cache {self.path} ({exc}); results are not cached.")
        self.new = []
