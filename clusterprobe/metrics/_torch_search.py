"""Exact nearest-neighbour search and Lloyd k-means in torch: the GPU path where FAISS has none.

FAISS runs k-means and exact search on GPUs only in its GPU build, which PyPI does not carry for
current CUDA versions (``pip install faiss-cpu`` is what most environments have). On such a
machine a 1,281,167 x 2048 bank would be clustered by FAISS on the CPU, far slower than the GPU
beside it. The functions here do the same computations with torch matrix products on whatever
device the rows are on (:class:`~._stream.DeviceRows`: resident on the GPU when they fit in half
of its free memory, else sent a chunk at a time). They are tested against FAISS on the CPU
(``tests/test_metrics_torch_search.py``): the same neighbours, and the same Lloyd iterations from
the same starting centroids. The rows arrive prepared (L2-normalised for cosine search and
spherical k-means) by :class:`~._stream.DeviceRows`.

Lloyd k-means follows FAISS's definitions: squared Euclidean distances, or, spherical, inner
products with centroids renormalised to unit length after each update; the objective is the sum
over points of the best distance (or inner product) to the centroids of that iteration; an empty
cluster takes over half of a large cluster (its centroid split in two, FAISS's rule). The
initialisation is k-means++ (squared Euclidean distance sampling), seeded.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ._stream import DeviceRows, memory_budget

EPS = 1.0 / 1024.0  # FAISS's relative perturbation when splitting a cluster for an empty one


def _best(piece: torch.Tensor, centroids: torch.Tensor, spherical: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(value, index) of each row's nearest centroid: largest inner product, or smallest squared
    Euclidean distance (expanded as |x|^2 - 2 x.c + |c|^2, clamped at 0)."""
    products = piece @ centroids.T  # (rows, k)
    if spherical:
        return products.max(dim=1)
    products.mul_(-2.0).add_((centroids * centroids).sum(dim=1)[None, :])
    value, index = products.min(dim=1)
    return (value + (piece * piece).sum(dim=1)).clamp_(min=0.0), index


def kmeans_plus_plus(rows: DeviceRows, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: the first centroid uniformly, each next one with probability
    proportional to the squared distance to the nearest centroid so far. Returns (k, d) float32.

    One pass over the rows per centroid (O(n k d) in all, like one Lloyd iteration), with O(n)
    memory for the running distances. Sampling draws from ``generator`` on the CPU, so the
    centroids chosen depend only on the seed and the data."""
    n, d = rows.n, rows.d
    device = rows.device
    centroids = torch.empty((k, d), dtype=torch.float32, device=device)
    first = int(torch.randint(n, (1,), generator=generator))
    centroids[0] = rows.take(torch.tensor([first], device=device))[0]
    nearest = torch.full((n,), math.inf, dtype=torch.float32, device=device)
    for j in range(1, k):
        latest = centroids[j - 1 : j]
        for start, stop, piece in rows.pieces():
            dist = ((piece - latest) ** 2).sum(dim=1)
            torch.minimum(nearest[start:stop], dist, out=nearest[start:stop])
        weights = nearest.double().cpu()
        total = float(weights.sum())
        if total <= 0:  # every point coincides with a centroid: any point will do
            pick = int(torch.randint(n, (1,), generator=generator))
        else:
            threshold = float(torch.rand((), generator=generator, dtype=torch.float64)) * total
            pick = min(int(torch.searchsorted(weights.cumsum(0), torch.tensor([threshold], dtype=torch.float64))), n - 1)
        centroids[j] = rows.take(torch.tensor([pick], device=device))[0]
    return centroids


def lloyd(rows: DeviceRows, centroids: torch.Tensor, niter: int, tol: float, spherical: bool,
          generator: torch.Generator) -> tuple[torch.Tensor, list[float]]:
    """Up to ``niter`` Lloyd iterations from ``centroids`` (k, d), stopping once an iteration
    changes the objective by less than ``tol`` relative to its value. Returns the centroids and the
    objective of each iteration (of the assignment to the centroids it started from)."""
    k, d = centroids.shape
    history: list[float] = []
    for _ in range(niter):
        sums = torch.zeros((k, d), dtype=torch.float32, device=rows.device)
        counts = torch.zeros(k, dtype=torch.float64, device=rows.device)
        objective = torch.zeros((), dtype=torch.float64, device=rows.device)
        for _, _, piece in rows.pieces():
            value, index = _best(piece, centroids, spherical)
            objective += value.sum(dtype=torch.float64)
            sums.index_add_(0, index, piece)
            counts += torch.bincount(index, minlength=k).to(torch.float64)
        centroids = _update(sums, counts, centroids, spherical, generator)
        history.append(float(objective))
        if len(history) >= 2 and abs(history[-1] - history[-2]) <= tol * abs(history[-1]):
            break
    return centroids, history


def _update(sums: torch.Tensor, counts: torch.Tensor, previous: torch.Tensor, spherical: bool,
            generator: torch.Generator) -> torch.Tensor:
    """New centroids: the mean of each cluster (renormalised when spherical); an empty cluster
    takes half of a cluster chosen with probability proportional to its size beyond one point,
    both centroids moved apart by a relative 1/1024 in alternating directions, as FAISS does."""
    counts_cpu = counts.cpu()
    centroids = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1.0)[:, None].float(), previous)
    empty = torch.nonzero(counts_cpu == 0).flatten().tolist()
    if empty:
        counts_cpu = counts_cpu.clone()
        d = centroids.shape[1]
        signs = torch.ones(d, dtype=torch.float32, device=centroids.device)
        signs[1::2] = -1.0
        for j in empty:
            weights = (counts_cpu - 1).clamp(min=0)
            if float(weights.sum()) <= 0:
                break  # fewer points than clusters: nothing to split
            donor = int(torch.multinomial(weights, 1, generator=generator))
            base = centroids[donor].clone()
            centroids[j] = base * (1 + EPS * signs)
            centroids[donor] = base * (1 - EPS * signs)
            counts_cpu[j] = counts_cpu[donor] / 2
            counts_cpu[donor] -= counts_cpu[j]
    if spherical:
        centroids = F.normalize(centroids, dim=1)
    return centroids


def assign(rows: DeviceRows, centroids: torch.Tensor, spherical: bool) -> np.ndarray:
    """Each row's nearest centroid (int64, (n,))."""
    labels = np.empty(rows.n, dtype=np.int64)
    for start, stop, piece in rows.pieces():
        labels[start:stop] = _best(piece, centroids, spherical)[1].cpu().numpy()
    return labels


def kmeans_once(rows: DeviceRows, k: int, seed: int, niter: int, tol: float, spherical: bool,
                init: str = "k-means++", init_centroids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """One k-means run on the rows (L2-normalised already when ``spherical``): (labels (n,),
    centroids (k, d) float32, final objective). ``init`` is 'k-means++' or 'random' (k distinct
    rows drawn uniformly); ``init_centroids`` (k, d) replaces it."""
    generator = torch.Generator().manual_seed(int(seed))
    if init_centroids is None and init == "random":
        pick = torch.randperm(rows.n, generator=generator)[:k].to(rows.device)
        centroids = rows.take(pick).clone()
    elif init_centroids is None:
        centroids = kmeans_plus_plus(rows, k, generator)
    else:
        centroids = torch.as_tensor(np.asarray(init_centroids, dtype=np.float32), device=rows.device)
    centroids, history = lloyd(rows, centroids, niter, tol, spherical, generator)
    return assign(rows, centroids, spherical), centroids.cpu().numpy(), (history[-1] if history else math.nan)


def search(database: DeviceRows, queries: DeviceRows, k: int, inner_product: bool) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of ``database`` for each row of ``queries`` (both already in the
    form to compare: L2-normalised for cosine). Returns ``(scores, indices)`` (m, k) as
    :func:`~._device.faiss_search` does: inner products largest first, or squared Euclidean
    distances smallest first. Each query chunk is compared with every database piece, keeping
    the running k best."""
    m = queries.n
    scores_out = np.empty((m, k), dtype=np.float32)
    index_out = np.empty((m, k), dtype=np.int64)
    for q0, q1, query in queries.pieces():
        best_scores = best_index = None
        # the (query rows, database rows) products within the working-memory budget
        width = max(k, memory_budget() // (8 * (q1 - q0)))
        for p0, p1, piece in database.pieces():
            for b0 in range(0, p1 - p0, width):
                block = piece[b0 : b0 + width]
                value = query @ block.T  # larger is nearer
                if not inner_product:
                    value.mul_(2.0).sub_((block * block).sum(dim=1)[None, :])  # 2 q.c - |c|^2
                top, where = value.topk(min(k, block.shape[0]), dim=1)
                where += p0 + b0
                if best_scores is not None:
                    top, where = torch.cat([best_scores, top], dim=1), torch.cat([best_index, where], dim=1)
                    top, order = top.topk(min(k, top.shape[1]), dim=1)
                    where = where.gather(1, order)
                best_scores, best_index = top, where
        if not inner_product:  # back to squared distances: |q|^2 + |c|^2 - 2 q.c
            best_scores = ((query * query).sum(dim=1)[:, None] - best_scores).clamp_(min=0.0)
        scores_out[q0:q1] = best_scores.cpu().numpy()
        index_out[q0:q1] = best_index.cpu().numpy()
    return scores_out, index_out
