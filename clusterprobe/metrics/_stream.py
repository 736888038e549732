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
copying them. :class:`DeviceRows` hands the rows to torch on a device: one resident tensor where
that is free or fits, else a chunk at a time.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Iterator

import numpy as np
import torch

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


class DeviceRows:
    """Features as float32 tensors on ``device``, standardised or L2-normalised as they are read.

    ``X`` is an array (float32 or float16), a read-only memory map or a :class:`RowSubset`
    (n, d); ``scale`` is None or the (mean, inverse) float32 rows of a standardisation (the
    probes); ``normalize`` scales each row to unit length instead (cosine search, spherical
    k-means). The rows are *resident* (one tensor) when that costs no copy (float32 rows used as
    they are, on the CPU: the tensor shares ``X``'s memory), when the prepared copy fits in the
    working-memory budget, or, on a GPU, when it fits in half of the GPU's free memory (sent
    chunk by chunk). Otherwise they are read from ``X`` whenever asked for, ``chunk`` rows
    (within the budget, with ``bytes_per_row`` of the caller's buffers) at a time.
    ``hold=False`` makes no resident copy whatever it would fit (a caller that reads only a
    :meth:`subset` of the rows); a tensor ``X``, or the CPU's zero-copy view, is still used as it is.
    """

    def __init__(self, X, scale, device: torch.device, bytes_per_row: float = 0.0, normalize: bool = False,
                 hold: bool = True):
        if scale is not None and normalize:
            raise ValueError("DeviceRows: standardise or normalise, not both")
        self.X, self.scale, self.device, self.normalize = X, scale, device, bool(normalize)
        self.n, self.d = int(X.shape[0]), int(X.shape[1])
        # the chunk, its standardised copy and the caller's per-row buffers within the budget
        self.chunk = chunk_rows(8 * self.d + bytes_per_row, minimum=64)
        self.resident = self._resident(hold)

    def _resident(self, hold: bool = True) -> torch.Tensor | None:
        X, nbytes = self.X, 4.0 * self.n * self.d
        if isinstance(X, torch.Tensor):
            return X
        if not hold:
            nbytes = math.inf  # only the copy-free view below
        if self.device.type == "cuda" and nbytes < 0.5 * torch.cuda.mem_get_info(self.device)[0]:
            out = torch.empty((self.n, self.d), dtype=torch.float32, device=self.device)
            for start, stop in chunks(self.n, self.chunk):
                out[start:stop] = self._host(start, stop)
            return out
        if self.device.type == "cpu" and self.scale is None and not self.normalize \
                and isinstance(X, np.ndarray) and X.dtype == np.float32 and X.flags.c_contiguous:
            return to_tensor(X, self.device)  # shares X's memory (a memory map stays one)
        if fits(nbytes):
            return to_tensor(self._prepare(np.asarray(X)), self.device)
        return None

    def _prepare(self, block: np.ndarray) -> np.ndarray:
        if self.normalize:
            from ..linalg import l2_normalize

            return l2_normalize(np.asarray(block, dtype=np.float32))
        if self.scale is None:
            return block
        mean, inverse = self.scale
        out = block - mean
        out *= inverse
        return out

    def _host(self, start: int, stop: int) -> torch.Tensor:
        return to_tensor(self._prepare(read(self.X, start, stop)), self.device)

    def pieces(self):
        """(start, stop, rows) over all rows: one piece when resident and the caller's buffers fit."""
        if self.resident is not None and self.n <= self.chunk:
            yield 0, self.n, self.resident
            return
        for start, stop in chunks(self.n, self.chunk):
            yield start, stop, (self.resident[start:stop] if self.resident is not None else self._host(start, stop))

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """Rows ``index`` (a tensor on ``device``), in that order."""
        if self.resident is not None:
            return self.resident[index]
        return to_tensor(self._prepare(take(self.X, index.cpu().numpy())), self.device)

    def subset(self, index: np.ndarray) -> "DeviceRows":
        """Rows ``index`` (int64, within 0..n; sorted reads the host in order) as rows of their own
        on ``device``, prepared as these are. Gathered on the device from resident rows there (a
        GPU, or rows handed in as a tensor); otherwise read from ``X`` by the usual rule (resident
        when they fit, else a chunk at a time), so host memory stays within the budget even when
        these rows are a zero-copy view. The values are the same either way."""
        index = np.asarray(index, dtype=np.int64)
        if self.resident is not None and (self.device.type != "cpu" or isinstance(self.X, torch.Tensor)):
            return DeviceRows(self.resident[torch.from_numpy(index).to(self.device)], None, self.device)
        return DeviceRows(RowSubset(self.X, index), self.scale, self.device, normalize=self.normalize)


def to_tensor(X: np.ndarray, device: torch.device) -> torch.Tensor:
    X = np.ascontiguousarray(X, dtype=np.float32)
    with warnings.catch_warnings():  # a read-only memory map: the tensor is only ever read
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(X).to(device)
