"""Reading feature arrays chunk by chunk within a stated working-memory budget.

The metrics take features as NumPy arrays, and a feature bank hands them out as read-only
memory maps (``np.load(mmap_mode='r')``): a 1,281,167 x 2048 float32 bank is 10.5 GB on disk,
more than a machine may want to hold twice. Every metric therefore reads its input in chunks of
rows sized from :func:`memory_budget` (256 MiB by default; ``CLUSTERPROBE_METRICS_MEMORY``
overrides it, e.g. ``1G`` or ``64M``) and never makes an O(n d) copy, so its extra memory is that
budget, plus O(k d) for per-cluster or per-class sums, plus O(n) for per-sample results (labels,
silhouettes, neighbours). The pages of a memory-mapped input that the kernel keeps cached are
not counted: they belong to the file and are dropped under memory pressure.

:class:`RowSubset` stands for selected rows of an array (a probe's hold-out split) without
copying them.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np

#: Default working memory of one metric beyond its input, in bytes.
MEMORY = 256 * 2**20
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}


def memory_budget() -> int:
    """Working memory per metric in bytes: ``CLUSTERPROBE_METRICS_MEMORY`` (``512M``, ``2G``,
    a byte count) or :data:`MEMORY`."""
    text = os.environ.get("CLUSTERPROBE_METRICS_MEMORY", "").strip().upper().removesuffix("B").removesuffix("I")
    if not text:
        return int(MEMORY)
    unit = text[-1] if text[-1] in _UNITS else ""
    try:
        value = float(text[: len(text) - len(unit)])
    except ValueError:
        raise ValueError(f"CLUSTERPROBE_METRICS_MEMORY={os.environ['CLUSTERPROBE_METRICS_MEMORY']!r} is not a "
                         "size; use e.g. 256M or 2G.") from None
    return max(1, int(value * _UNITS[unit]))


def chunk_rows(bytes_per_row: float, *, memory: int | None = None, minimum: int = 1, multiple: int = 1) -> int:
    """Rows per chunk so that ``rows * bytes_per_row`` stays within ``memory`` (the budget), at
    least ``minimum`` and rounded down to a multiple of ``multiple`` where possible."""
    budget = memory_budget() if memory is None else memory
    rows = max(int(minimum), int(budget // max(float(bytes_per_row), 1.0)))
    if rows >= multiple:
        rows -= rows % multiple
    return max(1, rows)


def chunks(n: int, rows: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of consecutive chunks of ``rows`` rows covering 0..n."""
    rows = max(1, int(rows))
    for start in range(0, n, rows):
        yield start, min(n, start + rows)


def read(X, start: int, stop: int, dtype=np.float32) -> np.ndarray:
    """Rows ``start:stop`` of ``X`` (array, memory map or :class:`RowSubset`) as ``dtype``.

    A view of the input where the dtype already matches (do not modify it), a new array otherwise.
    """
    return np.asarray(X[start:stop], dtype=dtype)


def take(X, index: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Rows ``index`` of ``X`` in that order, as a new array of ``dtype`` (``len(index)`` rows)."""
    return np.asarray(X[np.asarray(index)], dtype=dtype)


def fits(nbytes: float, memory: int | None = None) -> bool:
    """Whether an array of ``nbytes`` fits in the working-memory budget."""
    return nbytes <= (memory_budget() if memory is None else memory)


class RowSubset:
    """Rows ``index`` (in that order) of a 2-D array ``base``, read only when asked for.

    Supports what the metrics use: ``shape``, ``dtype``, ``ndim``, ``len()``, slicing rows
    (``subset[a:b]``) and integer-array indexing (``subset[idx]``), both returning new arrays;
    ``np.asarray(subset)`` materialises every row (O(len * d), for callers that want a copy).
    """

    def __init__(self, base, index: np.ndarray):
        if isinstance(base, RowSubset):
            base, index = base.base, base.index[np.asarray(index)]
        self.base = base
        self.index = np.asarray(index, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.index.size), int(self.base.shape[1]))

    @property
    def dtype(self):
        return self.base.dtype

    ndim = 2

    def __len__(self) -> int:
        return int(self.index.size)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            raise TypeError("RowSubset supports row indexing only")
        return self.base[self.index[key]]

    def __array__(self, dtype=None, copy=None):
        out = self.base[self.index]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"RowSubset({len(self)} of {self.base.shape[0]} rows)"
