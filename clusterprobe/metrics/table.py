"""The result record (:class:`MetricRow`) and the tidy table made of such rows: columns, dtypes.

Every result the suite returns or caches is one :class:`MetricRow`. The table's columns are the
record's fields, in the record's order, and each column's dtype follows from the field's type,
so rows computed now and rows read back from the cache file come out identical.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Iterable

import pandas as pd


@dataclass(frozen=True)
class MetricRow:
    """One value of one metric for one (run, method, epoch, layer, split).

    ``value`` is the metric (a fraction or a plain number, never a percentage), ``std`` its
    standard deviation over k-means seeds where there are seeds (else NaN) and ``n`` the number
    of samples scored. ``k`` .. ``evaluation`` record the settings that produced the value in
    readable form; ``unit`` names the piece of work that computed it, ``settings`` (JSON) and
    ``settings_hash`` exactly the settings that unit depends on, and ``data_id`` the identity
    of the data (empty when unknown, e.g. arrays that are not cached). ``note`` says why a
    metric was skipped (``value`` is then NaN), and is empty otherwise.
    """

    run: str
    method: str
    epoch: int | None
    layer: str
    split: str
    metric: str
    value: float
    std: float = math.nan
    n: int | None = None
    k: int | None = None
    normalize: bool | None = None
    distance: str = ""
    seeds: str = ""
    protocol: str = ""
    evaluation: str = ""
    unit: str = ""
    settings: str = ""
    settings_hash: str = ""
    data_id: str = ""
    note: str = ""

    def astuple(self) -> tuple:
        """The field values in column order (no copies, unlike :func:`dataclasses.astuple`)."""
        return tuple(getattr(self, name) for name in COLUMNS)

    @classmethod
    def from_record(cls, record) -> "MetricRow":
        """A row from a mapping with (at least) every column, e.g. a cache file's row."""
        return cls(**{name: record[name] for name in COLUMNS})


#: The table's columns: the fields of :class:`MetricRow`, in order.
COLUMNS: list[str] = [f.name for f in dataclasses.fields(MetricRow)]

# Each field's type decides its column's dtype.
_DTYPES = {"str": "str", "int | None": "Int64", "float": "float", "bool | None": "boolean"}
KINDS: dict[str, str] = {f.name: _DTYPES[f.type] for f in dataclasses.fields(MetricRow)}
STR_COLUMNS: list[str] = [c for c in COLUMNS if KINDS[c] == "str"]
INT_COLUMNS: list[str] = [c for c in COLUMNS if KINDS[c] == "Int64"]
FLOAT_COLUMNS: list[str] = [c for c in COLUMNS if KINDS[c] == "float"]
BOOL_COLUMNS: list[str] = [c for c in COLUMNS if KINDS[c] == "boolean"]


def missing(value) -> bool:
    """Whether a cell is empty: None, pandas' NA or NaN."""
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _as_bool(value):
    if missing(value):
        return pd.NA
    return str(value).lower() == "true" if isinstance(value, str) else bool(value)


def coerce(frame: pd.DataFrame) -> pd.DataFrame:
    """Put columns in order with stable dtypes (fresh rows and rows read back from CSV alike)."""
    frame = frame.reindex(columns=COLUMNS)
    for col in STR_COLUMNS:
        frame[col] = frame[col].astype(object).where(frame[col].notna(), "").astype(str)
    for col in INT_COLUMNS:
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("Int64")
    for col in FLOAT_COLUMNS:
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
    for col in BOOL_COLUMNS:
        frame[col] = frame[col].map(_as_bool).astype("boolean")
    return frame


def to_frame(rows: Iterable[MetricRow]) -> pd.DataFrame:
    """The rows as a table with the columns and dtypes of :func:`coerce`."""
    return coerce(pd.DataFrame([row.astuple() for row in rows], columns=COLUMNS))


def from_frame(frame: pd.DataFrame) -> list[MetricRow]:
    """The rows of a table holding (at least) every column, after :func:`coerce`."""
    return [MetricRow.from_record(record) for record in coerce(frame).to_dict("records")]
