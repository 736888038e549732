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
initialisation is k-means++ (squared Euclidean distance sampling), seeded, on a uniform sample of
at most :func:`seeding_sample_size` rows (every row of sets up to 2**18 rows); the Lloyd
iterations use every row.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ._stream import DeviceRows, RowSubset, chunks, memory_budget

EPS = 1.0 / 1024.0  # FAISS's relative perturbation when splitting a cluster for an empty one

#: k-means++ seeds from a uniform sample of this many rows per centroid (FAISS's default
#: ``max_points_per_centroid``: the sample FAISS seeds and trains all of its k-means on)...
SEED_POINTS_PER_CENTROID = 256
#: ...but from every row of a set up to this size (2**18 rows: 2 GiB at d = 2048)
SEED_MIN_POINTS = 2**18


def seeding_sample_size(n: int, k: int) -> int:
    """Rows k-means++ seeds from: ``min(n, max(256 k, 2**18))`` (:data:`SEED_POINTS_PER_CENTROID`,
    :data:`SEED_MIN_POINTS`).

    A function of n and k only, never of where the rows are or of the memory free, so a seed gives
    the same centroids whether the rows are resident on the device or read from the host, on a
    large GPU or a small one, with FAISS's GPU build or the torch backend. Sets up to 2**18 rows
    (CIFAR, ImageNet's validation set, ImageNet-100) are seeded from every row, as before. At
    ImageNet size (1,281,167 rows, k = 1000) the seeds come from 262,144 rows, which take 2 GiB at
    d = 2048: the k passes of k-means++ then run over that sample held on the device (one read
    of it from the host) instead of over the bank, a thousand times over PCIe when it is not
    resident. 256 points per centroid is FAISS's default bound for training (seeding and Lloyd
    iterations alike); scikit-learn's MiniBatchKMeans seeds from 3 max(batch, k) rows.
    """
    return int(min(n, max(SEED_POINTS_PER_CENTROID * k, SEED_MIN_POINTS)))


def seeding_sample(n: int, size: int, generator: torch.Generator) -> np.ndarray:
    """``size`` distinct rows of ``n``, uniformly at random from ``generator`` (int64, sorted so
    that the host is read in order)."""
    return torch.randperm(n, generator=generator)[:size].sort().values.numpy()


def devices_for(device: torch.device) -> list[torch.device]:
    """Where the rows go: every visible GPU for a bare ``cuda`` in one process (several GPUs share
    the work, as FAISS's GPU build does), else ``device`` alone (``cuda:N``, the CPU, or this
    rank's own GPU under torchrun)."""
    import os

    if device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) <= 1 and torch.cuda.device_count() > 1 \
            and device.index in (None, 0):
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [device]


class Shards:
    """Consecutive row ranges of ``X`` (n, d) on several devices, one :class:`DeviceRows` each
    (resident there when they fit, else read a chunk at a time), with the interface of one:
    ``pieces()`` yields (start, stop, rows) in row order, each on its own device; ``take`` gathers
    rows on the first device, where results are reduced."""

    def __init__(self, X, devices: list[torch.device], *, bytes_per_row: float = 0.0, normalize: bool = False):
        self.X, self.normalize = X, bool(normalize)
        self.n, self.d = int(X.shape[0]), int(X.shape[1])
        self.device = devices[0]
        bounds = np.linspace(0, self.n, len(devices) + 1).round().astype(int)
        self.parts = []
        for a, b, where in zip(bounds[:-1], bounds[1:], devices):
            if b > a:
                part = X if (a, b) == (0, self.n) else (
                    X[a:b] if isinstance(X, np.ndarray) else RowSubset(X, np.arange(a, b)))
                self.parts.append((int(a), DeviceRows(part, None, where, bytes_per_row, normalize)))

    def pieces(self):
        for offset, rows in self.parts:
            for start, stop, piece in rows.pieces():
                yield offset + start, offset + stop, piece

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """Rows ``index`` (global, any order) on the first device."""
        if len(self.parts) == 1 and self.parts[0][0] == 0:  # one device: no trip to the host
            return self.parts[0][1].take(index.to(self.device))
        index = index.cpu()
        out = torch.empty((index.numel(), self.d), dtype=torch.float32, device=self.device)
        for offset, rows in self.parts:
            mask = (index >= offset) & (index < offset + rows.n)
            if bool(mask.any()):
                where = torch.nonzero(mask).flatten().to(self.device)
                out[where] = rows.take((index[mask] - offset).to(rows.device)).to(self.device)
        return out

    def subset(self, index: np.ndarray) -> DeviceRows:
        """Rows ``index`` (int64, sorted) as rows of their own on the first device
        (:meth:`DeviceRows.subset`): gathered from the devices when every share is resident there,
        else read from the host."""
        if len(self.parts) == 1 and self.parts[0][0] == 0:
            return self.parts[0][1].subset(index)
        if all(rows.resident is not None and rows.device.type != "cpu" for _, rows in self.parts):
            out = torch.empty((len(index), self.d), dtype=torch.float32, device=self.device)
            for start, stop in chunks(len(index), self.parts[0][1].chunk):
                out[start:stop] = self.take(torch.from_numpy(np.asarray(index[start:stop], dtype=np.int64)))
            return DeviceRows(out, None, self.device)
        return DeviceRows(RowSubset(self.X, index), None, self.device, normalize=self.normalize)


class _OnDevices:
    """A small tensor (centroids) copied once to each device that asks for it."""

    def __init__(self, tensor: torch.Tensor):
        self.copies = {tensor.device: tensor}

    def on(self, device: torch.device) -> torch.Tensor:
        if device not in self.copies:
            self.copies[device] = next(iter(self.copies.values())).to(device)
        return self.copies[device]


def _best(piece: torch.Tensor, centroids: torch.Tensor, spherical: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(value, index) of each row's nearest centroid: largest inner product, or smallest squared
    Euclidean distance (expanded as |x|^2 - 2 x.c + |c|^2, clamped at 0)."""
    products = piece @ centroids.T  # (rows, k)
    if spherical:
        return products.max(dim=1)
    products.mul_(-2.0).add_((centroids * centroids).sum(dim=1)[None, :])
    value, index = products.min(dim=1)
    return (value + (piece * piece).sum(dim=1)).clamp_(min=0.0), index


def kmeans_plus_plus(rows: Shards | DeviceRows, k: int, generator: torch.Generator, *,
                     sample: int | None = None) -> torch.Tensor:
    """k-means++ seeding: the first centroid uniformly, each next one with probability
    proportional to the squared distance to the nearest centroid so far. Returns (k, d) float32.

    The centroids are drawn from ``sample`` rows (default :func:`seeding_sample_size`: every row up
    to 2**18 rows, else ``max(256 k, 2**18)``), chosen uniformly without replacement by
    ``generator`` before anything else is drawn: k-means++ of that sample. The sample is taken
    with :meth:`~._stream.DeviceRows.subset`: from resident rows on the device, else one read of
    those rows from the host (held on the device when they fit, as any rows are), so rows that are
    not resident are not read once per centroid. Its size never depends on where the rows are, so
    the centroids do not either. With ``sample >= n`` (the rule for sets up to 2**18 rows) the
    draws are exactly those of k-means++ on all rows.

    One pass over the rows per centroid (O(n k d) in all, like one Lloyd iteration), each as fast
    as a matrix-vector product: ``torch.cdist`` without the matrix-product expansion, which would
    lose every digit for rows far from the origin (at x + 1000, relative errors of 700 instead of
    2e-6), then squared; O(n) memory for the running distances. Every random number is drawn from
    ``generator`` on the CPU before the first pass, so the centroids depend only on the seed and
    the data; the sampling (a float64 cumulative sum and a binary search) stays on the device, so
    with resident rows the loop never waits for the GPU. A point already chosen (distance 0) is
    never chosen again; if every point coincides with a centroid, a uniformly drawn one is taken."""
    size = seeding_sample_size(rows.n, k) if sample is None else max(int(k), int(sample))
    if size < rows.n:
        rows = rows.subset(seeding_sample(rows.n, size, generator))
    n, d = rows.n, rows.d
    device = rows.device
    first = torch.randint(n, (1,), generator=generator)
    uniform = torch.rand(k, generator=generator, dtype=torch.float64).to(device)
    fallback = torch.randint(n, (k,), generator=generator).to(device)
    centroids = torch.empty((k, d), dtype=torch.float32, device=device)
    centroids[0] = rows.take(first.to(device))[0]
    nearest = torch.full((n,), math.inf, dtype=torch.float32, device=device)
    for j in range(1, k):
        latest = _OnDevices(centroids[j - 1 : j])
        for start, stop, piece in rows.pieces():
            dist = torch.cdist(piece, latest.on(piece.device), compute_mode="donot_use_mm_for_euclid_dist")[:, 0]
            dist.square_()
            torch.minimum(nearest[start:stop], dist.to(device), out=nearest[start:stop])
        cumulative = nearest.double().cumsum(0)
        total = cumulative[-1:]
        # the first point whose cumulative weight exceeds u * total: one with a positive weight
        pick = torch.searchsorted(cumulative, uniform[j : j + 1] * total, right=True).clamp_(max=n - 1)
        pick = torch.where(total > 0, pick, fallback[j : j + 1])
        centroids[j] = rows.take(pick)[0]
    return centroids


def lloyd(rows: Shards | DeviceRows, centroids: torch.Tensor, niter: int, tol: float, spherical: bool,
          generator: torch.Generator) -> tuple[torch.Tensor, list[float]]:
    """Up to ``niter`` Lloyd iterations from ``centroids`` (k, d), stopping once an iteration
    changes the objective by less than ``tol`` relative to its value. Returns the centroids and the
    objective of each iteration (of the assignment to the centroids it started from)."""
    k, d = centroids.shape
    history: list[float] = []
    for _ in range(niter):
        on = _OnDevices(centroids)
        totals: dict[torch.device, list[torch.Tensor]] = {}  # sums, counts, objective per device
        for _, _, piece in rows.pieces():
            if piece.device not in totals:
                totals[piece.device] = [torch.zeros((k, d), dtype=torch.float32, device=piece.device),
                                        torch.zeros(k, dtype=torch.float64, device=piece.device),
                                        torch.zeros((), dtype=torch.float64, device=piece.device)]
            sums, counts, objective = totals[piece.device]
            value, index = _best(piece, on.on(piece.device), spherical)
            objective += value.sum(dtype=torch.float64)
            sums.index_add_(0, index, piece)
            counts += torch.bincount(index, minlength=k).to(torch.float64)
        sums, counts, objective = (sum(t[i].to(centroids.device) for t in totals.values()) for i in range(3))
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


def assign(rows: Shards | DeviceRows, centroids: torch.Tensor, spherical: bool) -> np.ndarray:
    """Each row's nearest centroid (int64, (n,))."""
    labels = np.empty(rows.n, dtype=np.int64)
    on = _OnDevices(centroids)
    for start, stop, piece in rows.pieces():
        labels[start:stop] = _best(piece, on.on(piece.device), spherical)[1].cpu().numpy()
    return labels


def kmeans_once(rows: Shards | DeviceRows, k: int, seed: int, niter: int, tol: float, spherical: bool,
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


def search(database: Shards | DeviceRows, queries: DeviceRows, k: int, inner_product: bool) -> tuple[np.ndarray, np.ndarray]:
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
        on = _OnDevices(query)
        for p0, p1, piece in database.pieces():
            here = on.on(piece.device)
            for b0 in range(0, p1 - p0, width):
                block = piece[b0 : b0 + width]
                value = here @ block.T  # larger is nearer
                if not inner_product:
                    value.mul_(2.0).sub_((block * block).sum(dim=1)[None, :])  # 2 q.c - |c|^2
                top, where = value.topk(min(k, block.shape[0]), dim=1)
                top, where = top.to(query.device), where.to(query.device) + (p0 + b0)
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
