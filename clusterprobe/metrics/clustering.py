"""k-means with FAISS on all points, and agreement of its clusters with ground truth.

Defaults (this project's choices; the paper does not publish its k-means settings): k = number of
classes, features L2-normalised (spherical k-means), 3 seeds reported as mean and std, k-means++
initialisation, Lloyd iterations until the objective changes by less than 1e-4 (relative, as
scikit-learn's default tolerance; at most 100 iterations).
FAISS by default trains on at most 256 points per centroid, silently subsampling larger sets;
:func:`kmeans` always trains on every point: every Lloyd iteration and the final assignment use
all n rows. Seeding: FAISS on the CPU draws its k-means++ seeds from every row too; the torch
backend, and FAISS's GPU build (seeded by it), draw them from a uniform sample of
``min(n, max(256 k, 2**18))`` rows (:func:`~._torch_search.seeding_sample_size`: every row up
to 262,144 rows; 262,144 of ImageNet's 1,281,167 at k = 1000), the same whatever the device and
its free memory.
"""

from __future__ import annotations

import math
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    normalized_mutual_info_score,
)
from sklearn.metrics.cluster import contingency_matrix

from ..devices import resolve_device
from ._device import SMALL_WORK, faiss_module, faiss_use_gpu, search_backend, threads_for
from ..linalg import l2_normalize
from . import _torch_search
from ._stream import DeviceRows, chunk_rows, chunks, fits, read
from ._validation import (
    MetricsError,
    as_features,
    as_labels,
    check_k,
    check_two_classes,
    seed_list,
)

INITS = ("k-means++", "random")
CHUNK = 5  # Lloyd iterations between convergence checks


@dataclass
class KMeansResult:
    """Clusterings of one feature matrix, one per seed.

    ``labels`` (n_seeds, n) int64 cluster indices; ``centroids`` (n_seeds, k, d) float32;
    ``objective`` (n_seeds,) final FAISS objective (sum of squared distances, or of inner
    products when ``normalize``/spherical).
    """

    labels: np.ndarray
    centroids: np.ndarray
    objective: np.ndarray
    seeds: tuple[int, ...]
    k: int
    normalize: bool
    niter: int
    tol: float
    init: str
    gpu: bool = False
    settings: dict = field(default_factory=dict)
    backend: str = "faiss"  # 'faiss' or 'torch' (see clusterprobe.metrics._torch_search)

    def __post_init__(self) -> None:
        if not self.settings:  # what produced the clusterings, as recorded with the results
            self.settings = {"k": self.k, "normalize": self.normalize, "seeds": list(self.seeds),
                             "niter": self.niter, "tol": self.tol, "init": self.init}

    def __len__(self) -> int:
        return len(self.seeds)


def _init_method(faiss, init: str):
    """FAISS's constant for ``init`` (one of :data:`INITS`)."""
    if init == "k-means++":
        method = getattr(faiss, "ClusteringInitMethod_KMEANS_PLUS_PLUS", None)
        if method is None:
            raise MetricsError(
                f"This FAISS ({faiss.__version__}) has no k-means++ initialisation; upgrade "
                "faiss (>= 1.13) or pass init='random'."
            )
        return method
    return getattr(faiss, "ClusteringInitMethod_RANDOM", None)


def _one_thread(run, seed):
    """``run(seed)`` with FAISS on one OpenMP thread (the setting is per calling thread)."""
    faiss_module().omp_set_num_threads(1)
    return run(seed)


def _kmeans_once(faiss, data: np.ndarray, k: int, seed: int, niter: int, tol: float, normalize: bool, method, gpu: bool,
                 init_centroids: np.ndarray | None = None):
    """One FAISS k-means run on every row of ``data`` (n, d); returns (labels, centroids, objective).
    ``init_centroids`` (k, d), when given, replace FAISS's own seeding.

    Lloyd iterations run in chunks of ``CHUNK``, each continuing from the previous centroids
    (which FAISS does exactly), until an iteration changes the objective by less than ``tol``
    relative to its value, or ``niter`` iterations are done. On the GPU, where each chunk would
    set up GPU resources again, all ``niter`` iterations run in one call.
    """
    n, d = data.shape
    options = dict(
        nredo=1,
        seed=int(seed),
        spherical=bool(normalize),
        verbose=False,
        # every point takes part: no subsampling, and no warning for small clusters
        max_points_per_centroid=int(math.ceil(n / k)) + 1,
        min_points_per_centroid=1,
    )
    if method is not None:
        options["init_method"] = method
    if gpu:
        options["gpu"] = True
    centroids, history, done = init_centroids, [], 0
    chunk = niter if gpu else CHUNK
    while done < niter:
        steps = min(chunk, niter - done)
        km = faiss.Kmeans(d, k, niter=steps, **options)
        km.train(data, init_centroids=centroids)
        centroids, done = km.centroids, done + steps
        history.extend(float(v) for v in km.obj)
        if len(history) >= 2 and abs(history[-1] - history[-2]) <= tol * abs(history[-1]):
            break
    _, assigned = km.assign(data)
    return assigned.astype(np.int64), centroids, (history[-1] if history else math.nan)


def kmeans(
    X,
    k: int,
    *,
    seeds=3,
    normalize: bool = True,
    niter: int = 100,
    tol: float = 1e-4,
    init: str = "k-means++",
    device: str = "auto",
    backend: str = "auto",
) -> KMeansResult:
    """Run FAISS k-means on all n points of ``X`` (n, d) once per seed.

    ``k`` clusters, 2 <= k <= n. ``seeds`` is a count (``3`` means seeds 0, 1, 2) or a list of
    seeds. With ``normalize`` (default) rows are L2-normalised and centroids kept on the unit
    sphere (spherical k-means, i.e. cosine similarity); otherwise plain Euclidean k-means on
    the raw features. Runs on the GPU when FAISS was built with GPU support and one exists
    (``device='auto'``). Stops after ``niter`` Lloyd iterations, or earlier once an iteration
    improves the objective by less than ``tol`` (relative). ``init`` is 'k-means++' (default)
    or 'random'.

    ``backend``: 'faiss', 'torch' (Lloyd iterations as torch matrix products on ``device``,
    :mod:`~clusterprobe.metrics._torch_search`), or 'auto' (default): torch on a CUDA device that
    FAISS cannot use (pip's faiss-cpu), FAISS otherwise. Both implement the same algorithm; their
    k-means++ draws differ, so the clusterings of one seed differ as two seeds' do. The torch
    backend (and FAISS's GPU build, which it seeds) draws the k-means++ seeds from a uniform
    sample of ``min(n, max(256 k, 2**18))`` rows, a rule of n and k alone (so the same seed gives
    the same seeds on any GPU, rows resident or not); the Lloyd iterations use every row.

    Returns a :class:`KMeansResult`: ``labels`` (n_seeds, n), ``centroids`` (n_seeds, k, d),
    ``objective`` (n_seeds,).

    Extra memory (host): about 8 n (labels) + 12 n per seed running at once (FAISS's assignment
    and distance buffers) + 8 k d + FAISS's blocks of 4096 x k distances, plus, with
    ``normalize`` and n d 4 bytes over the working-memory budget (256 MiB), ~256 MiB of chunks
    while the normalised rows are written to a scratch file (n d 4 bytes of disk, in
    ``CLUSTERPROBE_SCRATCH`` or the temporary directory) that FAISS then reads as a memory map.
    ``X`` itself (an array or a read-only memory map, e.g. a feature bank) is never copied.

    Raises:
        MetricsError: bad shapes, k out of range, bad seeds, niter, tol or init.
        NonFiniteFeaturesError: NaN or infinite features.
    """
    X = as_features(X, "k-means features")
    k = check_k(k, X.shape[0])
    seeds = seed_list(seeds)
    if isinstance(niter, bool) or not isinstance(niter, (int, np.integer)) or niter < 1:
        raise MetricsError(f"niter must be a positive integer number of iterations; got {niter!r}.")
    if not tol >= 0:
        raise MetricsError(f"tol must be a non-negative number; got {tol!r}.")
    if init not in INITS:
        raise MetricsError(f"Unknown k-means init {init!r}: use one of {', '.join(INITS)}.")
    backend = search_backend(device, backend)  # also refuses an unknown backend
    return _kmeans(X, k, seeds, bool(normalize), int(niter), float(tol), init, device, backend)


def _kmeans(X: np.ndarray, k: int, seeds: tuple[int, ...], normalize: bool, niter: int, tol: float,
            init: str, device: str, backend: str = "auto") -> KMeansResult:
    """:func:`kmeans` on validated input: ``X`` float32 or float16 (n, d), 2 <= k <= n, seeds a tuple."""
    if search_backend(device, backend) == "torch":
        return _kmeans_torch(X, k, seeds, normalize, niter, tol, init, resolve_device(device))
    n, d = X.shape
    faiss = faiss_module()
    method = _init_method(faiss, init)
    gpu = faiss_use_gpu(device)
    # FAISS seeds k-means++ on the CPU, one thread, one pass per centroid (ImageNet, k = 1000:
    # several minutes per seed beside an idle GPU): with its GPU build, the torch seeding on the GPU
    seed_device = _gpu_for_seeding(device) if gpu and init == "k-means++" else None
    with _kmeans_data(X, normalize) as data:
        return _kmeans_on(data, k, seeds, normalize, niter, tol, init, faiss, method, gpu, seed_device)


def _gpu_for_seeding(device: str) -> torch.device:
    """The GPU that seeds k-means++ for FAISS's GPU build: ``device`` when it names one, else the first."""
    resolved = resolve_device(device)
    return resolved if resolved.type == "cuda" else torch.device("cuda", 0)


def _torch_seeds(data: np.ndarray, k: int, seeds: tuple[int, ...], device: torch.device) -> list[np.ndarray]:
    """k-means++ centroids (k, d) for each seed, drawn by the torch backend on ``device`` from
    ``data`` as FAISS will cluster it (normalised already): the seeding the torch backend makes,
    on its sample of :func:`~._torch_search.seeding_sample_size` rows. When that is a sample, only
    its rows go to the device (one read of them per seed), not the whole of ``data``."""
    whole = _torch_search.seeding_sample_size(data.shape[0], k) >= data.shape[0]
    rows = _torch_search.Shards(data, [device]) if whole else DeviceRows(data, None, device, hold=False)
    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
    out = [_torch_search.kmeans_plus_plus(rows, k, g).cpu().numpy() for g in generators]
    del rows
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the rows' copy, before FAISS takes the GPU
    return out


@contextmanager
def _kmeans_data(X: np.ndarray, normalize: bool):
    """The rows FAISS clusters, float32: ``X`` itself, or its L2-normalised rows with
    ``normalize``, or (float16 ``X``) its rows widened to float32.

    FAISS reads its input in blocks of rows, so a float32 array or memory map is used as it is.
    Other rows are made in memory when they fit in the working-memory budget
    (:func:`~._stream.memory_budget`); otherwise they are written chunk by chunk to a scratch
    file (in ``CLUSTERPROBE_SCRATCH``, else the temporary directory; n d 4 bytes of disk, removed
    at once) and memory-mapped, so host memory stays bounded whatever n.
    """
    if not normalize and X.dtype == np.float32:
        yield X
        return
    n, d = X.shape

    def rows(start: int, stop: int) -> np.ndarray:
        block = read(X, start, stop)
        return l2_normalize(block) if normalize else np.array(block, dtype=np.float32)

    if fits(4.0 * n * d):
        yield rows(0, n)
        return
    folder = os.environ.get("CLUSTERPROBE_SCRATCH") or tempfile.gettempdir()
    handle, path = tempfile.mkstemp(prefix="clusterprobe-kmeans-", suffix=".npy", dir=folder)
    os.close(handle)
    try:
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
        for start, stop in chunks(n, chunk_rows(8 * d, minimum=64)):
            out[start:stop] = rows(start, stop)
        out.flush()
        del out
        data = np.load(path, mmap_mode="r")
    finally:
        os.unlink(path)  # the open map keeps the file's pages until it is closed
    yield data


def _kmeans_on(data: np.ndarray, k: int, seeds: tuple[int, ...], normalize: bool, niter: int, tol: float,
               init: str, faiss, method, gpu: bool, seed_device: torch.device | None = None) -> KMeansResult:
    """:func:`_kmeans` on the rows FAISS clusters (``data``, normalised already if asked);
    ``seed_device``: draw the k-means++ seeds there with the torch backend instead of FAISS."""
    n, d = data.shape
    labels = np.empty((len(seeds), n), dtype=np.int64)
    centroids = np.empty((len(seeds), k, d), dtype=np.float32)
    objective = np.empty(len(seeds), dtype=np.float64)
    starts = dict(zip(seeds, _torch_seeds(data, k, seeds, seed_device))) if seed_device is not None else {}

    def run(seed: int):
        return _kmeans_once(faiss, data, k, seed, niter=niter, tol=tol, normalize=normalize, method=method,
                            gpu=gpu, init_centroids=starts.get(seed))

    # FAISS assigns points in blocks of 4096 rows: one matrix product per block and iteration.
    # For small k these products are too small to share between threads (and on a busy machine
    # OpenMP barriers stall), so then each seed runs on one thread, several seeds at a time.
    step = 2 * min(n, 4096) * k * d
    workers = 1 if gpu or step >= SMALL_WORK else min(len(seeds), torch.get_num_threads())
    with threads_for(step):
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(partial(_one_thread, run), seeds))
        else:
            results = [run(seed) for seed in seeds]
    for i, (assigned, centres, final) in enumerate(results):
        labels[i], centroids[i], objective[i] = assigned, centres, final
    return KMeansResult(
        labels=labels,
        centroids=centroids,
        objective=objective,
        seeds=seeds,
        k=k,
        normalize=normalize,
        niter=niter,
        tol=tol,
        init=init,
        gpu=gpu,
    )


def _kmeans_torch(X, k: int, seeds: tuple[int, ...], normalize: bool, niter: int, tol: float, init: str,
                  device) -> KMeansResult:
    """:func:`_kmeans` with the torch backend: the (normalised) rows held on ``device`` (a bare
    ``cuda`` in one process: shared among all GPUs) once for all seeds when they fit (half the
    free GPU memory; the working-memory budget on the CPU), else read a chunk at a time at every
    pass."""
    n, d = X.shape
    # every GPU of the machine holds a share of the rows (+ the (rows, k) products per chunk)
    rows = _torch_search.Shards(X, _torch_search.devices_for(device), bytes_per_row=12.0 * k, normalize=normalize)
    labels = np.empty((len(seeds), n), dtype=np.int64)
    centroids = np.empty((len(seeds), k, d), dtype=np.float32)
    objective = np.empty(len(seeds), dtype=np.float64)
    with threads_for(2 * min(n, rows.parts[0][1].chunk) * k * d if device.type == "cpu" else math.inf):
        for i, seed in enumerate(seeds):
            labels[i], centroids[i], objective[i] = _torch_search.kmeans_once(rows, k, seed, niter, tol, normalize, init)
    return KMeansResult(
        labels=labels, centroids=centroids, objective=objective, seeds=seeds, k=k, normalize=normalize,
        niter=niter, tol=tol, init=init, gpu=device.type == "cuda", backend="torch",
    )


def _pair(labels_true, labels_pred) -> tuple[np.ndarray, np.ndarray]:
    y = as_labels(labels_true, name="labels_true")
    c = as_labels(labels_pred, n=y.shape[0], name="labels_pred")
    if y.size == 0:
        raise MetricsError("labels are empty: there is nothing to compare.")
    return y, c


def nmi(labels_true, labels_pred) -> float:
    """Normalised mutual information of ``labels_pred`` (n,) with ``labels_true`` (n,).

    Arithmetic mean normalisation, as scikit-learn's ``normalized_mutual_info_score``. Extra
    memory: O(n) (a sparse contingency table); no features involved.
    """
    return _nmi(*_pair(labels_true, labels_pred))


def ari(labels_true, labels_pred) -> float:
    """Adjusted Rand index of ``labels_pred`` (n,) with ``labels_true`` (n,), scikit-learn's.

    Extra memory: O(n) (a sparse contingency table); no features involved.
    """
    return _ari(*_pair(labels_true, labels_pred))


def cluster_acc(labels_true, labels_pred) -> float:
    """Accuracy of the best one-to-one matching of clusters ``labels_pred`` (n,) to classes
    ``labels_true`` (n,) (Hungarian algorithm).

    With more clusters than classes (or fewer) the unmatched clusters count as errors. Returns a
    fraction in [0, 1].
    """
    return _cluster_acc(*_pair(labels_true, labels_pred))


def _nmi(y: np.ndarray, c: np.ndarray) -> float:
    return float(normalized_mutual_info_score(y, c))


def _ari(y: np.ndarray, c: np.ndarray) -> float:
    return float(adjusted_rand_score(y, c))


def _cluster_acc(y: np.ndarray, c: np.ndarray) -> float:
    table = contingency_matrix(y, c)  # (classes, clusters)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / y.shape[0])


# on validated int64 label arrays of equal length
AGREEMENT = {"nmi": _nmi, "ari": _ari, "cluster_acc": _cluster_acc}


def cluster_agreement(labels_true, result: KMeansResult, *, metrics=tuple(AGREEMENT)) -> dict[str, tuple[float, float]]:
    """Mean and standard deviation over seeds of NMI, ARI and clustering accuracy.

    ``labels_true`` (n,) against each seed's ``result.labels`` (n_seeds, n). Returns
    ``{name: (mean, std)}`` for each name in ``metrics`` (``nmi``, ``ari``, ``cluster_acc``);
    std is the population std over seeds (0 for one seed).
    """
    y = as_labels(labels_true, n=result.labels.shape[1], name="labels_true")
    unknown = [name for name in metrics if name not in AGREEMENT]
    if unknown:
        raise MetricsError(f"Unknown agreement metric {unknown[0]!r}: use {', '.join(AGREEMENT)}.")
    return _agreement(y, result, metrics)


def _agreement(y: np.ndarray, result: KMeansResult, metrics) -> dict[str, tuple[float, float]]:
    """:func:`cluster_agreement` on validated labels ``y`` (n,) int64."""
    out = {}
    for name in metrics:
        values = np.array([AGREEMENT[name](y, labels) for labels in result.labels])
        out[name] = (float(values.mean()), float(values.std()))
    return out


def davies_bouldin(X, labels) -> float:
    """Davies-Bouldin index of ``labels`` (n,) on ``X`` (n, d), scikit-learn's; lower is better."""
    X = np.asarray(as_features(X), dtype=np.float32)  # float16 input: scikit-learn would compute in it
    y = as_labels(labels, n=X.shape[0])
    check_two_classes(y)
    return float(davies_bouldin_score(X, y))


def calinski_harabasz(X, labels) -> float:
    """Calinski-Harabasz index of ``labels`` (n,) on ``X`` (n, d), scikit-learn's; higher is better."""
    X = np.asarray(as_features(X), dtype=np.float32)  # float16 input: scikit-learn would compute in it
    y = as_labels(labels, n=X.shape[0])
    check_two_classes(y)
    return float(calinski_harabasz_score(X, y))


def _label_free_one(name: str, X: np.ndarray, labels: np.ndarray) -> float:
    if np.unique(labels).size < 2:  # k-means left a single non-empty cluster
        return math.nan
    score = davies_bouldin_score if name == "davies_bouldin" else calinski_harabasz_score
    return float(score(X, labels))


LABEL_FREE = ("davies_bouldin", "calinski_harabasz")


def cluster_validity(X, result: KMeansResult, *, metrics=LABEL_FREE) -> dict[str, tuple[float, float]]:
    """Davies-Bouldin (lower is better) and Calinski-Harabasz (higher is better) of k-means labels.

    Label-free: computed on the features ``X`` (n, d) k-means saw (L2-normalised when
    ``result.normalize``) for each seed's clustering, via scikit-learn. Returns
    ``{name: (mean, std)}`` over seeds. Normalised rows as in :func:`kmeans` (in memory or a
    scratch file); scikit-learn then copies one cluster's rows at a time (about n d 4 / k bytes).
    """
    X = as_features(X, "features")
    if X.shape[0] != result.labels.shape[1]:
        raise MetricsError(
            f"The k-means result has {result.labels.shape[1]} labels but the features have {X.shape[0]} rows."
        )
    unknown = [name for name in metrics if name not in LABEL_FREE]
    if unknown:
        raise MetricsError(f"Unknown cluster validity index {unknown[0]!r}: use {', '.join(LABEL_FREE)}.")
    return _validity(X, result, metrics)


def _validity(X: np.ndarray, result: KMeansResult, metrics) -> dict[str, tuple[float, float]]:
    """:func:`cluster_validity` on validated features ``X`` (n, d) float32 or float16."""
    out = {}
    with _kmeans_data(X, result.normalize) as data:  # no normalised copy of a bank-sized X
        for name in metrics:
            values = np.array([_label_free_one(name, data, labels) for labels in result.labels])
            values = values[np.isfinite(values)]
            out[name] = (float(values.mean()), float(values.std())) if values.size else (math.nan, math.nan)
    return out
