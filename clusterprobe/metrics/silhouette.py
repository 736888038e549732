"""Exact silhouette coefficients, cosine in O(n k d) and Euclidean in chunked torch.

The silhouette of sample i is s(i) = (b - a) / max(a, b), with a the mean distance to the other
members of its own cluster and b the smallest mean distance to another cluster; samples alone in
their cluster get 0 (scikit-learn's conventions, which these functions match to 1e-5).

* ``metric='cosine'`` (default): on L2-normalised rows x, the summed cosine distance from x_i to
  cluster C is |C| - x_i . S_C with S_C the sum of C's normalised rows, so the exact silhouette
  costs O(n k d) instead of O(n^2 d). Computed in float64.
* ``metric='euclidean'``: all pairwise distances, block by block (each block pair once, using
  symmetry), as float32 matrix products on centred features, reduced per cluster (contiguous
  after sorting by label) and accumulated in float64; on the GPU when torch sees one.

Nothing is sampled unless ``sample_size`` is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..devices import resolve_device
from ._device import threads_for
from ..linalg import l2_normalize
from ._validation import MetricsError, as_features, as_labels

METRICS = ("cosine", "euclidean")


@dataclass(frozen=True)
class SilhouetteStats:
    """Mean and standard deviation of the per-sample silhouette over ``n`` samples."""

    mean: float
    std: float
    n: int
    metric: str
    sampled: bool = False


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise MetricsError(f"Unknown silhouette metric {metric!r}: use 'cosine' or 'euclidean'.")
    return metric


def _encode(y: np.ndarray, n: int, name: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """Labels (n,) -> (codes 0..k-1 of shape (n,), counts of shape (k,)), requiring 2 <= k <= n - 1."""
    _, codes, counts = np.unique(y, return_inverse=True, return_counts=True)
    k = counts.size
    if not 2 <= k <= n - 1:
        raise MetricsError(
            f"The silhouette needs between 2 and n - 1 = {n - 1} distinct {name}; got {k}. "
            + ("All samples share one label: use labels with several classes."
               if k < 2 else "Every sample is its own cluster: use fewer clusters.")
        )
    return codes.astype(np.int64), counts.astype(np.int64)


def _cosine_sums(X: np.ndarray, codes_list: Sequence[np.ndarray], ks: Sequence[int], chunk: int = 8192):
    """Summed cosine distances from every sample to every cluster, for each labelling.

    Returns a list of float64 arrays of shape (n, k_j) and the distance of each sample to
    itself (n,), which the sums include: sum_j (1 - x_i . x_j) = |C| - x_i . S_C on
    L2-normalised rows. The self-distance is 0, or 1 for an all-zero row (whose cosine distance
    to everything else is 1, as in scikit-learn).
    """
    n, d = X.shape
    sums_of_rows = [np.zeros((k, d), dtype=np.float64) for k in ks]
    for start in range(0, n, chunk):
        block = l2_normalize(X[start : start + chunk].astype(np.float64))
        for S, codes in zip(sums_of_rows, codes_list):
            _scatter_add(S, codes[start : start + chunk], block)
    stacked = np.concatenate(sums_of_rows, axis=0)  # (sum k, d)
    counts = np.concatenate([np.bincount(c, minlength=k) for c, k in zip(codes_list, ks)]).astype(np.float64)
    out = np.empty((n, stacked.shape[0]), dtype=np.float64)
    self_distance = np.empty(n, dtype=np.float64)
    for start in range(0, n, chunk):
        block = l2_normalize(X[start : start + chunk].astype(np.float64))
        out[start : start + chunk] = counts[None, :] - block @ stacked.T
        self_distance[start : start + chunk] = 1.0 - np.einsum("ij,ij->i", block, block)
    splits = np.cumsum(ks)[:-1]
    return np.split(out, splits, axis=1), self_distance


def _scatter_add(target: np.ndarray, codes: np.ndarray, rows: np.ndarray) -> None:
    """target[c] += sum of rows whose code is c, via a one-hot product (fast for small k)."""
    onehot = np.zeros((codes.size, target.shape[0]), dtype=rows.dtype)
    onehot[np.arange(codes.size), codes] = 1.0
    target += onehot.T @ rows


def _default_block(device: torch.device) -> int:
    # big blocks keep the matrix products efficient (a 4096^2 float32 block is 64 MiB)
    return 8192 if device.type == "cuda" else 4096


def _segments(starts: np.ndarray, ends: np.ndarray, clusters: np.ndarray, lo: int, hi: int):
    """(start, stop, cluster) of the label runs that overlap rows lo:hi, relative to lo."""
    first = int(np.searchsorted(ends, lo, side="right"))
    out = []
    for i in range(first, len(starts)):
        if starts[i] >= hi:
            break
        out.append((max(starts[i], lo) - lo, min(ends[i], hi) - lo, int(clusters[i])))
    return out


def _augmented(X: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [x, |x|^2, 1] and [-2x, 1, |x|^2] of the centred features, as float32 tensors.

    Their product is the matrix of squared distances |x_i|^2 + |x_j|^2 - 2 x_i.x_j in a single
    matrix multiplication. Centring first keeps |x|^2 small, hence the float32 result exact to
    ~1e-7 relative even for features far from the origin.
    """
    center = X.mean(axis=0, dtype=np.float64).astype(np.float32)
    Xc = torch.from_numpy(X - center).to(device)
    sq = (Xc * Xc).sum(dim=1, dtype=torch.float64).float()[:, None]
    ones = torch.ones_like(sq)
    return torch.cat([Xc, sq, ones], dim=1), torch.cat([-2.0 * Xc, ones, sq], dim=1)


def _euclidean_sums(
    X: np.ndarray, codes_list: Sequence[np.ndarray], ks: Sequence[int], device: torch.device, block: int | None
):
    """Summed Euclidean distances from every sample to every cluster, for each labelling.

    Rows are sorted by the first labelling, so that its clusters are contiguous runs. Every
    pair of row blocks (I, J), J >= I, is visited once: D = ||x_i - x_j|| from one float32
    product of augmented centred rows (:func:`_augmented`); each run's slice of D is summed along rows (for the rows of I)
    and along columns (for the rows of J), the other labellings are reduced with one-hot
    products, and everything is accumulated in float64. Returns a list of float64 arrays of
    shape (n, k_j) in the original row order.
    """
    n, d = X.shape
    block = int(block or _default_block(device))
    order = np.argsort(codes_list[0], kind="stable")
    primary = codes_list[0][order]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(primary)) + 1])
    ends = np.concatenate([starts[1:], [n]])
    clusters = primary[starts]
    left, right = _augmented(X[order], device)
    sums0 = torch.zeros((n, ks[0]), dtype=torch.float64, device=device)
    rest_k = int(sum(ks[1:]))
    onehot = torch.zeros((n, rest_k), dtype=torch.float32, device=device)
    offset = 0
    for codes, k in zip(codes_list[1:], ks[1:]):
        onehot[torch.arange(n, device=device), torch.from_numpy(codes[order]).to(device) + offset] = 1.0
        offset += k
    sums_rest = torch.zeros((n, rest_k), dtype=torch.float64, device=device)
    blocks = [(i0, min(i0 + block, n)) for i0 in range(0, n, block)]
    runs = [_segments(starts, ends, clusters, i0, i1) for i0, i1 in blocks]
    with torch.no_grad():
        for bi, (i0, i1) in enumerate(blocks):
            for bj in range(bi, len(blocks)):
                j0, j1 = blocks[bj]
                dist = torch.mm(left[i0:i1], right[j0:j1].T).clamp_(min=0.0).sqrt_()
                if bi == bj:
                    dist.fill_diagonal_(0.0)
                for a, b, c in runs[bj]:  # distances from rows of I to the runs in J
                    sums0[i0:i1, c] += dist[:, a:b].sum(dim=1)
                if bi != bj:
                    for a, b, c in runs[bi]:  # and from rows of J to the runs in I
                        sums0[j0:j1, c] += dist[a:b, :].sum(dim=0)
                if rest_k:
                    sums_rest[i0:i1] += dist @ onehot[j0:j1]
                    if bi != bj:
                        sums_rest[j0:j1] += (onehot[i0:i1].T @ dist).T
    out = np.empty((n, int(sum(ks))), dtype=np.float64)
    out[order] = torch.cat([sums0, sums_rest], dim=1).cpu().numpy()
    splits = np.cumsum(ks)[:-1]
    return np.split(out, splits, axis=1)


def _from_sums(sums: np.ndarray, codes: np.ndarray, counts: np.ndarray, self_distance) -> np.ndarray:
    """Per-sample silhouette from summed distances (n, k), cluster codes (n,) and sizes (k,).

    ``self_distance`` (n,) or 0 is removed from each sample's own-cluster sum.
    """
    n = codes.size
    rows = np.arange(n)
    own = counts[codes]
    intra = (sums[rows, codes] - self_distance) / np.maximum(own - 1, 1)
    means = sums / counts[None, :]
    means[rows, codes] = np.inf
    inter = means.min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (inter - intra) / np.maximum(intra, inter)
    s[own == 1] = 0.0
    return np.nan_to_num(s)


def silhouette_samples_multi(
    X, label_sets: Sequence, *, metric: str = "cosine", device: str = "auto", block_size: int | None = None
) -> list[np.ndarray]:
    """Exact per-sample silhouettes of ``X`` (n, d) for several labellings at once.

    ``label_sets`` is a list of (n,) integer arrays (e.g. ground truth and k-means labels of
    each seed), each with between 2 and n - 1 distinct labels. The distances are computed once
    and shared, which for the Euclidean metric costs little more than one labelling. Returns
    one float64 array of shape (n,) per labelling. ``metric`` is 'cosine' (O(n k d)) or
    'euclidean' (O(n^2 d), in blocks of ``block_size`` rows, on ``device``).
    """
    metric = _check_metric(metric)
    X = as_features(X, "silhouette features")
    return _samples_multi(X, _check_label_sets(label_sets, X.shape[0]), metric, device, block_size)


def _check_label_sets(label_sets: Sequence, n: int) -> list[np.ndarray]:
    if not label_sets:
        raise MetricsError("label_sets is empty: pass at least one labelling.")
    return [as_labels(labels, n=n, name="labels") for labels in label_sets]


def _samples_multi(
    X: np.ndarray, label_sets: Sequence[np.ndarray], metric: str, device: str, block_size: int | None
) -> list[np.ndarray]:
    """:func:`silhouette_samples_multi` on validated ``X`` (n, d) float32 and (n,) int64 labels."""
    n = X.shape[0]
    encoded = [_encode(labels, n) for labels in label_sets]
    codes_list = [codes for codes, _ in encoded]
    ks = [counts.size for _, counts in encoded]
    if metric == "cosine":
        with threads_for(n * X.shape[1] * sum(ks)):
            sums, self_distance = _cosine_sums(X, codes_list, ks)
    else:
        dev = resolve_device(device)
        step = min(n, block_size or _default_block(dev)) ** 2 * X.shape[1]  # one block product
        with threads_for(step if dev.type == "cpu" else float("inf")):
            sums, self_distance = _euclidean_sums(X, codes_list, ks, dev, block_size), 0.0
    return [_from_sums(s, codes, counts, self_distance) for s, (codes, counts) in zip(sums, encoded)]


def silhouette_samples(
    X, labels, *, metric: str = "cosine", device: str = "auto", block_size: int | None = None
) -> np.ndarray:
    """Exact silhouette of every sample of ``X`` (n, d) under ``labels`` (n,); shape (n,).

    Same definition and edge cases as ``sklearn.metrics.silhouette_samples`` (agreement to
    1e-5), for ``metric`` 'cosine' (O(n k d)) or 'euclidean' (O(n^2 d), chunked).
    """
    return silhouette_samples_multi(X, [labels], metric=metric, device=device, block_size=block_size)[0]


def _check_sample_size(sample_size) -> None:
    if sample_size is None:
        return
    if isinstance(sample_size, bool) or not isinstance(sample_size, (int, np.integer)) or sample_size < 2:
        raise MetricsError(f"sample_size must be an integer >= 2 (or None for exact); got {sample_size!r}.")


def _subsample(n: int, sample_size, random_state) -> np.ndarray | None:
    if sample_size is None or sample_size >= n:
        return None
    rng = np.random.default_rng(random_state)
    return np.sort(rng.choice(n, size=int(sample_size), replace=False))


def silhouette_stats_multi(
    X,
    label_sets: Sequence,
    *,
    metric: str = "cosine",
    sample_size: int | None = None,
    random_state: int | None = 0,
    device: str = "auto",
) -> list[SilhouetteStats]:
    """Mean and spread (std across samples) of the silhouette of ``X`` (n, d) for each labelling.

    ``label_sets`` is a list of (n,) integer arrays. Exact over all n samples unless
    ``sample_size`` is set; then the same random subset of ``sample_size`` samples (drawn with
    ``random_state``) is used for every labelling, distances taken within the subset (as
    ``sklearn.metrics.silhouette_score(sample_size=...)``). Returns one
    :class:`SilhouetteStats` per labelling.
    """
    metric = _check_metric(metric)
    _check_sample_size(sample_size)
    X = as_features(X, "silhouette features")
    return _stats_multi(X, _check_label_sets(label_sets, X.shape[0]), metric, sample_size, random_state, device)


def _stats_multi(
    X: np.ndarray, label_sets: Sequence[np.ndarray], metric: str, sample_size: int | None, random_state, device: str
) -> list[SilhouetteStats]:
    """:func:`silhouette_stats_multi` on validated ``X`` (n, d) float32 and (n,) int64 labels."""
    idx = _subsample(X.shape[0], sample_size, random_state)
    if idx is not None:
        X = np.ascontiguousarray(X[idx])
        label_sets = [labels[idx] for labels in label_sets]
    values = _samples_multi(X, label_sets, metric, device, None)
    return [
        SilhouetteStats(float(v.mean()), float(v.std()), int(v.size), metric, sampled=idx is not None)
        for v in values
    ]


def silhouette_stats(
    X, labels, *, metric: str = "cosine", sample_size: int | None = None, random_state: int | None = 0,
    device: str = "auto",
) -> SilhouetteStats:
    """Mean and spread (std across samples) of the silhouette of ``X`` (n, d) under ``labels`` (n,)."""
    return silhouette_stats_multi(X, [labels], metric=metric, sample_size=sample_size,
                                  random_state=random_state, device=device)[0]


def silhouette_score(
    X, labels, *, metric: str = "cosine", sample_size: int | None = None, random_state: int | None = 0,
    device: str = "auto",
) -> float:
    """Mean silhouette coefficient of ``X`` (n, d) under ``labels`` (n,), like
    ``sklearn.metrics.silhouette_score`` but exact and fast."""
    return silhouette_stats(X, labels, metric=metric, sample_size=sample_size, random_state=random_state,
                            device=device).mean
