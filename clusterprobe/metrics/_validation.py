"""Input checks shared by the metric functions, and the error they raise.

Every check names the problem and the fix, so a notebook user or the command line sees one
clear message instead of a stack trace from deep inside FAISS, torch or scikit-learn.
"""

from __future__ import annotations

import numpy as np

from ..errors import MetricsError, NonFiniteFeaturesError
from ._stream import chunk_rows, memory_budget


def as_features(X, name: str = "features", dtype=np.float32) -> np.ndarray:
    """Return ``X`` as a C-contiguous 2-D array of ``dtype``, shape (n, d), after checks.

    A C-ordered array (or read-only memory map) of ``dtype`` is returned as it is, not copied;
    so is a float16 one (a float16 feature bank) when ``dtype`` is float32: the metrics read
    their input a chunk at a time (:func:`~._stream.read`) and compute in float32, so a float16
    bank is never copied whole. The finite check reads in chunks (extra memory: at most 16 MiB,
    whatever n).

    Raises :class:`MetricsError` for a wrong shape or an empty array and
    :class:`NonFiniteFeaturesError` (naming ``name`` and the number of bad rows) for NaN/inf.
    """
    if hasattr(X, "detach"):  # a torch tensor
        X = X.detach().cpu().numpy()
    X = np.asarray(X)
    if X.ndim != 2:
        raise MetricsError(
            f"{name} must be a 2-D array of shape (n_samples, n_features); got shape {X.shape}. "
            "Reshape it (e.g. X.reshape(len(X), -1)) before computing metrics."
        )
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise MetricsError(f"{name} is empty (shape {X.shape}); metrics need at least one sample and feature.")
    if not np.issubdtype(X.dtype, np.number) or np.iscomplexobj(X):
        raise MetricsError(f"{name} must hold real numbers; got dtype {X.dtype}.")
    if X.dtype == np.float16 and np.dtype(dtype) == np.float32:
        dtype = np.float16  # kept: read (and widened to float32) a chunk at a time
    X = np.ascontiguousarray(X, dtype=dtype)  # no copy for a C-ordered float32 array or memory map
    bad, first, largest = 0, -1, 0.0
    rows = chunk_rows(X.shape[1] * (X.itemsize + 1), memory=min(memory_budget(), 16 * 2**20))
    for start in range(0, X.shape[0], rows):  # in chunks, each row's extremes (NaN and inf propagate)
        chunk = X[start : start + rows]
        high, low = chunk.max(axis=1), chunk.min(axis=1)
        finite_rows = np.isfinite(high) & np.isfinite(low)
        count = int(finite_rows.size - finite_rows.sum())
        if count and first < 0:
            first = start + int(np.flatnonzero(~finite_rows)[0])
        bad += count
        if not count:
            largest = max(largest, float(np.abs(high).max()), float(np.abs(low).max()))
    if bad:
        raise NonFiniteFeaturesError(
            f"{name} holds NaN or infinite values in {bad} of {X.shape[0]} rows (first: row "
            f"{first}). Metrics refuse such features: re-extract them from a healthy "
            "checkpoint, or drop those rows (and their labels) yourself."
        )
    limit = max_magnitude(X.shape[1])
    if largest > limit:
        raise MetricsError(
            f"{name} holds values up to {largest:.3g} in magnitude: squared distances of such "
            f"{X.shape[1]}-d rows overflow float32 (the limit is {limit:.2g}), which would give wrong "
            "neighbours and clusterings. Is the checkpoint diverged? Re-extract from a healthy one, "
            "or scale the features down (e.g. L2-normalise them) yourself."
        )
    return X


def max_magnitude(d: int) -> float:
    """The largest feature value the metrics accept in ``d`` dimensions: a row of such values has
    a squared norm 16 times below float32's maximum (3.4e38), room for the sums of a few of them
    in squared distances (FAISS and the torch backend compute |x|^2 - 2 x.c + |c|^2 in float32)."""
    return float(np.sqrt(np.finfo(np.float32).max / (16.0 * max(int(d), 1))))


def as_labels(labels, n: int | None = None, name: str = "labels") -> np.ndarray:
    """Return ``labels`` as an int64 array of shape (n,), after checks."""
    if labels is None:
        raise MetricsError(f"{name} are missing; this metric needs one integer label per sample.")
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels)
    if y.ndim != 1:
        raise MetricsError(f"{name} must be 1-D, one label per sample; got shape {y.shape}.")
    if n is not None and y.shape[0] != n:
        raise MetricsError(
            f"{name} has {y.shape[0]} entries but there are {n} samples; pass exactly one label "
            "per row of the features."
        )
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        elif np.issubdtype(y.dtype, np.bool_):
            y = y.astype(np.int64)
        else:
            raise MetricsError(
                f"{name} must be integers (class indices); got dtype {y.dtype}. Encode class "
                "names first, e.g. with numpy.unique(names, return_inverse=True)[1]."
            )
    return np.ascontiguousarray(y, dtype=np.int64)


def check_two_classes(y: np.ndarray, name: str = "labels") -> int:
    """Return the number of distinct values in ``y``; raise unless there are at least two."""
    count = int(np.unique(y).size)
    if count < 2:
        value = f" (every sample is {int(y[0])})" if y.size else ""
        raise MetricsError(
            f"{name} hold a single class{value}. Clustering and accuracy metrics compare two or "
            "more classes: use a data set (or split) with several classes."
        )
    return count


def check_k(k, n: int) -> int:
    """Validate a number of clusters ``k`` for ``n`` samples: an integer with 2 <= k <= n."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise MetricsError(f"k must be an integer number of clusters; got {k!r}.")
    k = int(k)
    if k < 2:
        raise MetricsError(f"k = {k} clusters is too few: k-means metrics need k >= 2.")
    if k > n:
        raise MetricsError(
            f"k = {k} clusters is larger than the number of samples ({n}); choose k <= {n} "
            "(by default k is the number of classes)."
        )
    return k


def check_same_dim(a: np.ndarray, b: np.ndarray, what: str) -> None:
    """Raise unless ``a`` and ``b`` have the same number of features (columns)."""
    if a.shape[1] != b.shape[1]:
        raise MetricsError(
            f"{what}: train features have {a.shape[1]} dimensions but test features have "
            f"{b.shape[1]}. Use features of the same layer (and model) for both."
        )


def seed_list(seeds) -> tuple[int, ...]:
    """``3`` -> (0, 1, 2); a sequence of ints -> that tuple. At least one seed."""
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        if seeds < 1:
            raise MetricsError(f"seeds = {seeds}: use at least one k-means seed.")
        return tuple(range(int(seeds)))
    try:
        values = tuple(int(s) for s in seeds)
    except TypeError:
        raise MetricsError(f"seeds must be a count or a list of integers; got {seeds!r}.") from None
    if not values:
        raise MetricsError("seeds is empty: use at least one k-means seed.")
    if len(set(values)) != len(values):
        raise MetricsError(f"seeds {values} repeat a value; repeated seeds give identical runs.")
    return values
