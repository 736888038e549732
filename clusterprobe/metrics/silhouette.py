"""Exact silhouette coefficients, cosine in O(n k d) and Euclidean in chunked torch.

The silhouette of sample i is s(i) = (b - a) / max(a, b), with a the mean distance to the other
members of its own cluster and b the smallest mean distance to another cluster; samples alone in
their cluster get 0 (scikit-learn's conventions, which these functions match to 1e-5).

* ``metric='cosine'`` (default): on L2-normalised rows x, the summed cosine distance from x_i to
  cluster C is |C| - x_i . S_C with S_C the sum of C's normalised rows, so the exact silhouette
  costs O(n k d) instead of O(n^2 d). Computed in float64.
* ``metric='euclidean'``: all pairwise distances, block by block, as float32 matrix products on
  centred features, reduced per cluster into float64 sums for one block of rows at a time; on
  the GPU when torch sees one, and over torch.distributed ranks with ``distributed=True``.

Both read ``X`` in chunks of rows (a memory-mapped feature bank is never copied) and need memory
bounded independently of n, beyond the (n,) outputs; each function states its bound.

Nothing is sampled unless ``sample_size`` is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..devices import resolve_device
from ._device import threads_for
from ._stream import chunk_rows, chunks, read
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


def _cosine_silhouettes(X, encoded, normalize: bool = False, shard: tuple[int, int] = (0, 1)) -> list[np.ndarray]:
    """Per-sample cosine silhouettes of ``X`` (n, d) for each (codes, counts) in ``encoded``.

    Two passes over the rows, in chunks: the first sums the L2-normalised rows of every
    cluster of every labelling (S_C, float64); the second computes, per chunk, the summed
    cosine distances sum_j (1 - x_i . x_j) = |C| - x_i . S_C from each row to each cluster and
    turns them into that chunk's silhouettes. The self-distance (0, or 1 for an all-zero row,
    whose cosine distance to everything is 1 as in scikit-learn) is removed from the own
    cluster. ``normalize`` is ignored (cosine distances ignore row norms). With ``shard``
    (rank, world) this process takes its share of the chunks and the cluster sums and
    silhouettes are summed over the torch.distributed ranks.

    Extra memory: 8 K d bytes for the cluster sums (K = sum of the k's) plus chunks of about
    :func:`~._stream.memory_budget` bytes (~0.35 GiB in all at d 2048, K 4000), plus the (n,)
    outputs.
    """
    n, d = X.shape
    ks = [counts.size for _, counts in encoded]
    K = int(sum(ks))
    # per row of a chunk: the float64 block (read, normalised), the (chunk, K) sums, and the
    # (chunk, k) one-hot or _from_sums' copies of one labelling's slice
    rows = chunk_rows(8 * (2 * d + K + 2 * max(ks)) + 64, minimum=64)
    mine = _my_chunks(n, rows, shard)
    stacked = np.zeros((K, d), dtype=np.float64)
    offsets = np.concatenate([[0], np.cumsum(ks)])
    for start, stop in mine:
        block = l2_normalize(read(X, start, stop, np.float64))
        for j, (codes, _) in enumerate(encoded):
            _scatter_add(stacked[offsets[j] : offsets[j + 1]], codes[start:stop], block)
    stacked = _all_reduce_sum(stacked, shard)
    counts = np.concatenate([c for _, c in encoded]).astype(np.float64)
    values = [np.zeros(n, dtype=np.float64) for _ in encoded]
    for start, stop in mine:
        block = l2_normalize(read(X, start, stop, np.float64))
        sums = block @ stacked.T
        np.subtract(counts[None, :], sums, out=sums)
        self_distance = 1.0 - np.einsum("ij,ij->i", block, block)
        for j, (codes, own) in enumerate(encoded):
            values[j][start:stop] = _from_sums(sums[:, offsets[j] : offsets[j + 1]], codes[start:stop], own,
                                               self_distance)
    return _gather_values(values, shard)


def _my_chunks(n: int, rows: int, shard: tuple[int, int]) -> list[tuple[int, int]]:
    """This rank's consecutive share of the chunks of ``rows`` rows covering 0..n."""
    everything = list(chunks(n, rows))
    rank, world = shard
    per = -(-len(everything) // world)
    return everything[rank * per : (rank + 1) * per]


def _all_reduce_sum(array: np.ndarray, shard: tuple[int, int]) -> np.ndarray:
    """``array`` summed over the torch.distributed ranks (itself in one process)."""
    if shard[1] == 1:
        return array
    import torch.distributed as dist

    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return tensor.cpu().numpy()


def _gather_values(values: list[np.ndarray], shard: tuple[int, int]) -> list[np.ndarray]:
    """Every rank's silhouettes (zero outside its rows) summed into the full (n,) arrays, exactly."""
    if shard[1] == 1:
        return values
    total = _all_reduce_sum(np.stack(values), shard)  # x + 0 = x: each entry comes from one rank
    return [row.copy() for row in total]


def _scatter_add(target: np.ndarray, codes: np.ndarray, rows: np.ndarray) -> None:
    """target[c] += sum of rows whose code is c, via a one-hot product (fast for small k)."""
    onehot = np.zeros((codes.size, target.shape[0]), dtype=rows.dtype)
    onehot[np.arange(codes.size), codes] = 1.0
    target += onehot.T @ rows


def _default_block(device: torch.device) -> int:
    # big blocks keep the matrix products efficient (a 4096^2 float32 block is 64 MiB)
    return 8192 if device.type == "cuda" else 4096


def _center(X, normalize: bool, rows: int) -> np.ndarray:
    """Mean row (float64 accumulation, returned as float32) of ``X``, L2-normalised rows if asked."""
    total = np.zeros(X.shape[1], dtype=np.float64)
    for start, stop in chunks(X.shape[0], rows):
        block = read(X, start, stop)
        total += (l2_normalize(block) if normalize else block).sum(axis=0, dtype=np.float64)
    return (total / X.shape[0]).astype(np.float32)


def _augmented(block: np.ndarray, center: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [x, |x|^2, 1] and [-2x, 1, |x|^2] of the centred rows ``block``, as float32 tensors.

    Their product is the matrix of squared distances |x_i|^2 + |x_j|^2 - 2 x_i.x_j in a single
    matrix multiplication. Centring first keeps |x|^2 small, hence the float32 result exact to
    ~1e-7 relative even for features far from the origin.
    """
    Xc = torch.from_numpy(block - center).to(device)
    sq = (Xc * Xc).sum(dim=1, dtype=torch.float64).float()[:, None]
    ones = torch.ones_like(sq)
    return torch.cat([Xc, sq, ones], dim=1), torch.cat([-2.0 * Xc, ones, sq], dim=1)


def _euclidean_silhouettes(X, encoded, device: torch.device, block: int | None, normalize: bool = False,
                           shard: tuple[int, int] = (0, 1)) -> list[np.ndarray]:
    """Per-sample Euclidean silhouettes of ``X`` (n, d) for each (codes, counts) in ``encoded``.

    Rows are taken ``block`` at a time (I); for each, every block of ``block`` rows (J) is read
    and D = ||x_i - x_j|| computed from one float32 product of augmented centred rows
    (:func:`_augmented`); D's columns are added into per-cluster sums of the rows of I (one
    index-add per labelling, in float64), and once every J
    is done the silhouettes of I follow. ``normalize`` L2-normalises rows as they are read. With
    ``shard`` (rank, world) this process takes a consecutive share of the blocks I and the
    silhouettes are gathered over the torch.distributed ranks, equal to one process's.

    Extra memory: about block^2 * 12 + block * (16 K + 16 (d + 2)) bytes (K = sum of the k's;
    ~0.5 GiB at block 4096, d = 2048, K = 4000) plus the (n, number of labellings) codes and the
    (n,) outputs, whatever n. On a GPU the augmented rows of all of ``X`` are kept in GPU memory
    when they fit in half of what is free, instead of being sent again for every block I.
    """
    n, d = X.shape
    ks = [counts.size for _, counts in encoded]
    K = int(sum(ks))
    block = int(block or _default_block(device))
    offsets = np.concatenate([[0], np.cumsum(ks)])
    center = _center(X, normalize, chunk_rows(8 * d, minimum=64))

    def rows(start, stop):
        part = read(X, start, stop)
        return l2_normalize(part) if normalize else part

    codes = torch.from_numpy(np.stack([c + offsets[j] for j, (c, _) in enumerate(encoded)], axis=1)).to(device)
    resident = None
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if 2 * n * (d + 2) * 4 < free:
            resident = torch.cat([_augmented(rows(a, b), center, device)[1] for a, b in chunks(n, block)])
    values = [np.zeros(n, dtype=np.float64) for _ in encoded]
    with torch.no_grad():
        for i0, i1 in _my_chunks(n, block, shard):
            left, _ = _augmented(rows(i0, i1), center, device)
            sums = torch.zeros((K, i1 - i0), dtype=torch.float64, device=device)
            for j0, j1 in chunks(n, block):
                right = resident[j0:j1] if resident is not None else _augmented(rows(j0, j1), center, device)[1]
                dist = torch.mm(right, left.T).clamp_(min=0.0).sqrt_()  # (J, I): rows of J, columns of I
                if i0 == j0:
                    dist.fill_diagonal_(0.0)
                dist = dist.double()  # summed in float64: thousands of float32 terms per cluster
                for j in range(len(encoded)):
                    sums.index_add_(0, codes[j0:j1, j], dist)
            sums_np = sums.T.cpu().numpy()
            for j, (c, counts) in enumerate(encoded):
                values[j][i0:i1] = _from_sums(sums_np[:, offsets[j] : offsets[j + 1]], c[i0:i1], counts, 0.0)
    return _gather_values(values, shard)


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
    X, label_sets: Sequence, *, metric: str = "cosine", device: str = "auto", block_size: int | None = None,
    distributed: bool = False,
) -> list[np.ndarray]:
    """Exact per-sample silhouettes of ``X`` (n, d) for several labellings at once.

    ``label_sets`` is a list of (n,) integer arrays (e.g. ground truth and k-means labels of
    each seed), each with between 2 and n - 1 distinct labels. The distances are computed once
    and shared, which for the Euclidean metric costs little more than one labelling. Returns
    one float64 array of shape (n,) per labelling. ``metric`` is 'cosine' (O(n k d)) or
    'euclidean' (O(n^2 d), in blocks of ``block_size`` rows, on ``device``).

    ``X`` is read in chunks and never copied, so a read-only memory map (a feature bank) works
    as well as an array. Extra memory, whatever n: cosine about 8 K d bytes (K = sum of the
    numbers of clusters) plus ~256 MiB of chunks (``CLUSTERPROBE_METRICS_MEMORY``); Euclidean
    about block^2 * 12 + block * (16 K + 16 d) bytes (~0.5 GiB at block 4096, d 2048, K 4000);
    both plus the (n,) outputs.

    ``distributed=True``: this process is one of the ranks of a torch.distributed group (under
    torchrun); every rank passes the same ``X`` and labels, takes its share of the rows, and
    all of them get the full result, equal to one process's.
    """
    metric = _check_metric(metric)
    X = as_features(X, "silhouette features")
    return _samples_multi(X, _check_label_sets(label_sets, X.shape[0]), metric, device, block_size,
                          distributed=bool(distributed))


def _check_label_sets(label_sets: Sequence, n: int) -> list[np.ndarray]:
    if not label_sets:
        raise MetricsError("label_sets is empty: pass at least one labelling.")
    return [as_labels(labels, n=n, name="labels") for labels in label_sets]


def _shard(distributed: bool) -> tuple[int, int]:
    """(rank, world size) to split the work over, (0, 1) unless ``distributed`` under torchrun."""
    if not distributed:
        return (0, 1)
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise MetricsError(
            "distributed=True needs a torch.distributed process group (run under torchrun and call "
            "clusterprobe.distributed.init_distributed() or torch.distributed.init_process_group first)."
        )
    return (dist.get_rank(), dist.get_world_size())


def _samples_multi(
    X: np.ndarray, label_sets: Sequence[np.ndarray], metric: str, device: str, block_size: int | None,
    normalize: bool = False, distributed: bool = False,
) -> list[np.ndarray]:
    """:func:`silhouette_samples_multi` on validated ``X`` (n, d) float32 or float16 and (n,) int64 labels.

    ``normalize``: L2-normalise the rows as they are read (for the Euclidean metric on
    normalised features, without a normalised copy of ``X``).
    """
    n = X.shape[0]
    encoded = [_encode(labels, n) for labels in label_sets]
    ks = [counts.size for _, counts in encoded]
    shard = _shard(distributed)
    if metric == "cosine":
        with threads_for(n * X.shape[1] * sum(ks)):
            return _cosine_silhouettes(X, encoded, normalize, shard)
    dev = resolve_device(device)
    step = min(n, block_size or _default_block(dev)) ** 2 * X.shape[1]  # one block product
    with threads_for(step if dev.type == "cpu" else float("inf")):
        return _euclidean_silhouettes(X, encoded, dev, block_size, normalize, shard)


def silhouette_samples(
    X, labels, *, metric: str = "cosine", device: str = "auto", block_size: int | None = None,
    distributed: bool = False,
) -> np.ndarray:
    """Exact silhouette of every sample of ``X`` (n, d) under ``labels`` (n,); shape (n,).

    Same definition and edge cases as ``sklearn.metrics.silhouette_samples`` (agreement to
    1e-5), for ``metric`` 'cosine' (O(n k d)) or 'euclidean' (O(n^2 d), chunked). Memory and
    ``distributed`` as :func:`silhouette_samples_multi`.
    """
    return silhouette_samples_multi(X, [labels], metric=metric, device=device, block_size=block_size,
                                    distributed=distributed)[0]


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
    distributed: bool = False,
) -> list[SilhouetteStats]:
    """Mean and spread (std across samples) of the silhouette of ``X`` (n, d) for each labelling.

    ``label_sets`` is a list of (n,) integer arrays. Exact over all n samples unless
    ``sample_size`` is set; then the same random subset of ``sample_size`` samples (drawn with
    ``random_state``) is used for every labelling, distances taken within the subset (as
    ``sklearn.metrics.silhouette_score(sample_size=...)``). Returns one
    :class:`SilhouetteStats` per labelling. Memory (bounded whatever n; a memory-mapped ``X``
    is read in chunks) and ``distributed`` as :func:`silhouette_samples_multi`.
    """
    metric = _check_metric(metric)
    _check_sample_size(sample_size)
    X = as_features(X, "silhouette features")
    return _stats_multi(X, _check_label_sets(label_sets, X.shape[0]), metric, sample_size, random_state, device,
                        distributed=bool(distributed))


def _stats_multi(
    X: np.ndarray, label_sets: Sequence[np.ndarray], metric: str, sample_size: int | None, random_state, device: str,
    normalize: bool = False, distributed: bool = False,
) -> list[SilhouetteStats]:
    """:func:`silhouette_stats_multi` on validated ``X`` (n, d) float32 or float16 and (n,) int64 labels
    (rows L2-normalised as they are read with ``normalize``)."""
    idx = _subsample(X.shape[0], sample_size, random_state)
    if idx is not None:
        X = np.ascontiguousarray(X[idx])  # sample_size rows
        label_sets = [labels[idx] for labels in label_sets]
    values = _samples_multi(X, label_sets, metric, device, None, normalize, distributed)
    return [
        SilhouetteStats(float(v.mean()), float(v.std()), int(v.size), metric, sampled=idx is not None)
        for v in values
    ]


def silhouette_stats(
    X, labels, *, metric: str = "cosine", sample_size: int | None = None, random_state: int | None = 0,
    device: str = "auto", distributed: bool = False,
) -> SilhouetteStats:
    """Mean and spread (std across samples) of the silhouette of ``X`` (n, d) under ``labels`` (n,)."""
    return silhouette_stats_multi(X, [labels], metric=metric, sample_size=sample_size,
                                  random_state=random_state, device=device, distributed=distributed)[0]


def silhouette_score(
    X, labels, *, metric: str = "cosine", sample_size: int | None = None, random_state: int | None = 0,
    device: str = "auto", distributed: bool = False,
) -> float:
    """Mean silhouette coefficient of ``X`` (n, d) under ``labels`` (n,), like
    ``sklearn.metrics.silhouette_score`` but exact and fast (memory bounded whatever n)."""
    return silhouette_stats(X, labels, metric=metric, sample_size=sample_size, random_state=random_state,
                            device=device, distributed=distributed).mean
