"""2-D UMAP embeddings of feature-bank layers: capped, cached on disk, on the GPU when cuML is there.

What made UMAP slow in a report (6 of 16 minutes on 2,000 test points x 4 layers x 2 runs) and
what is done about it:

* umap-learn's small-data path (under 4,096 points) hands its numba ``cosine`` function to
  scikit-learn's ``pairwise_distances``, which calls it once per pair from Python (millions of
  calls). Here the exact cosine k-nearest neighbours come from one matrix product per block
  (:func:`cosine_knn`) and are passed to UMAP as ``precomputed_knn``: the same graph, in
  milliseconds.
* numba compiles umap's kernels on first use. :func:`configure_numba_cache` points numba's
  on-disk cache at a user cache directory (unless ``NUMBA_CACHE_DIR`` is set) before umap is
  imported, and the few parallel kernels umap does not cache itself (the fuzzy-set ones, ~5 s per
  process) are cached too, so only the very first report on a machine compiles them.
* ``n_epochs`` 200 (umap-learn's choice for large data; it uses 500 under 10,000 points): the
  layout has converged for a figure long before.
* At most ``max_points`` points per embedding (stratified by class, the report's default 2,000).
* Each embedding is cached in the report's folder, keyed by the bank's fingerprint, the layer and
  every setting, so re-running a finished report recomputes nothing.
* cuML's UMAP is used when it can be imported and a CUDA GPU is present (``backend="auto"``),
  falling back to umap-learn on the CPU if it fails.

The layers are computed one after the other: umap-learn runs single-threaded for a fixed seed
(which the figures keep, for reproducibility), and its kernels hold the GIL, so threads would not
overlap; once the work above is done, an embedding of 2,000 points takes about a second.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

import numpy as np

from ..io import atomic_write, fingerprint

#: Settings of every embedding unless told otherwise (all of them key the cache).
UMAP_DEFAULTS = {"n_neighbors": 15, "min_dist": 0.1, "metric": "cosine", "n_epochs": 200}
BACKENDS = ("auto", "cpu", "cuml")
#: Bumped when the computation changes in a way the settings do not show (keys the cache).
_VERSION = 2


def configure_numba_cache() -> Path:
    """Set ``NUMBA_CACHE_DIR`` (if unset) to ``$XDG_CACHE_HOME/clusterprobe/numba``; return it."""
    if "NUMBA_CACHE_DIR" not in os.environ:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        os.environ["NUMBA_CACHE_DIR"] = str(base / "clusterprobe" / "numba")
    path = Path(os.environ["NUMBA_CACHE_DIR"])
    path.mkdir(parents=True, exist_ok=True)
    return path


def subsample_indices(labels: np.ndarray | None, n: int, max_points: int, seed: int = 0) -> np.ndarray:
    """At most ``max_points`` row indices, stratified by label when labels exist, sorted."""
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(n, size=max_points, replace=False))
    chosen = []
    classes, counts = np.unique(labels, return_counts=True)
    for label, count in zip(classes, counts):
        take = max(1, int(round(max_points * count / n)))
        members = np.flatnonzero(labels == label)
        chosen.append(rng.choice(members, size=min(take, len(members)), replace=False))
    return np.sort(np.concatenate(chosen))[:max_points]


def cosine_knn(features: np.ndarray, k: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``k`` nearest neighbours by cosine distance, each point first (distance 0), as umap's
    ``precomputed_knn`` wants them: (indices int32 (n, k), distances float32 (n, k)), sorted."""
    x = np.asarray(features, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n = len(x)
    k = min(k, n)
    indices = np.empty((n, k), dtype=np.int32)
    distances = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, block):
        stop = min(start + block, n)
        d = np.clip(1.0 - x[start:stop] @ x.T, 0.0, 2.0)
        rows = np.arange(stop - start)
        d[rows, np.arange(start, stop)] = -1.0  # the point itself first, even among duplicates
        part = np.argpartition(d, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(rows), 1))
        part_d = np.take_along_axis(d, part, axis=1)
        order = np.argsort(part_d, axis=1, kind="stable")
        indices[start:stop] = np.take_along_axis(part, order, axis=1)
        distances[start:stop] = np.maximum(np.take_along_axis(part_d, order, axis=1), 0.0)
    return indices, distances


def cuml_available() -> bool:
    """Whether cuML's UMAP can be imported and a CUDA GPU is present."""
    try:
        import torch

        if not torch.cuda.is_available():
            return False
        from cuml.manifold import UMAP  # noqa: F401
    except Exception:  # not installed, or a broken CUDA stack
        return False
    return True


def umap_embedding(
    features: np.ndarray,
    n_neighbors: int = UMAP_DEFAULTS["n_neighbors"],
    min_dist: float = UMAP_DEFAULTS["min_dist"],
    metric: str = UMAP_DEFAULTS["metric"],
    seed: int = 0,
    n_epochs: int | None = UMAP_DEFAULTS["n_epochs"],
    backend: str = "auto",
) -> np.ndarray:
    """UMAP of ``features`` (n, d) to (n, 2), deterministic for a given seed on the CPU.

    ``backend``: "auto" (cuML on a GPU when available, else umap-learn), "cpu" or "cuml" (an
    error when it is not available). A failing cuML run under "auto" falls back to the CPU.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    features = np.asarray(features, dtype=np.float32)
    n_neighbors = max(2, min(n_neighbors, len(features) - 1))
    if backend == "cuml" or (backend == "auto" and cuml_available()):
        try:
            return _cuml_umap(features, n_neighbors, min_dist, metric, seed, n_epochs)
        except Exception as error:
            if backend == "cuml":
                raise
            warnings.warn(f"cuML's UMAP failed ({type(error).__name__}: {error}); using umap-learn on the CPU",
                          RuntimeWarning, stacklevel=2)
    return _cpu_umap(features, n_neighbors, min_dist, metric, seed, n_epochs)


def _cuml_umap(features, n_neighbors, min_dist, metric, seed, n_epochs) -> np.ndarray:
    from cuml.manifold import UMAP

    reducer = UMAP(n_neighbors=n_neighbors, min_dist=min_dist, metric=metric, random_state=seed,
                   n_components=2, n_epochs=n_epochs, output_type="numpy")
    points = reducer.fit_transform(features)
    points = points.get() if hasattr(points, "get") else points  # a CuPy array in older versions
    return np.asarray(points, dtype=np.float32)


def _cpu_umap(features, n_neighbors, min_dist, metric, seed, n_epochs) -> np.ndarray:
    umap = _import_umap()
    options = {}
    if metric == "cosine" and len(features) > n_neighbors:
        indices, distances = cosine_knn(features, n_neighbors)
        options["precomputed_knn"] = (indices, distances, None)
    with warnings.catch_warnings():
        # umap warns that a seed disables its parallelism, and that a precomputed kNN graph
        # leaves transform() unavailable (the report never calls it)
        warnings.simplefilter("ignore")
        reducer = umap.UMAP(n_neighbors=n_neighbors, min_dist=min_dist, metric=metric,
                            random_state=seed, n_components=2, n_epochs=n_epochs, **options)
        return reducer.fit_transform(features).astype(np.float32)


_UMAP = None


def _import_umap():
    """umap-learn, with numba's disk cache on for all of its module-level kernels."""
    global _UMAP
    if _UMAP is None:
        configure_numba_cache()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import numba
            import umap
            import umap.layouts
            import umap.umap_
            import umap.utils

        for module in (umap.umap_, umap.layouts, umap.utils):
            for value in vars(module).values():
                # umap caches some kernels itself; the parallel fuzzy-set ones it recompiles in
                # every process (seconds each): cache those too
                if isinstance(value, numba.core.dispatcher.Dispatcher) and \
                        getattr(value, "__module__", None) == module.__name__ and \
                        isinstance(getattr(value, "_cache", None), numba.core.caching.NullCache):
                    try:
                        value.enable_caching()
                    except Exception:  # a kernel numba cannot cache: compiled as before
                        pass
        _UMAP = umap
    return _UMAP


def cached_bank_embedding(
    bank,
    layer: str,
    cache_dir: str | Path,
    max_points: int = 2000,
    seed: int = 0,
    backend: str = "auto",
    **umap_kwargs,
) -> tuple[np.ndarray, np.ndarray]:
    """(points (m, 2), labels (m,)) for a bank layer, computed once and cached in ``cache_dir``.

    The cache file is keyed by the bank's fingerprint, the layer, ``max_points``, ``seed`` and
    every UMAP setting (``umap_kwargs`` over :data:`UMAP_DEFAULTS`), not by the backend: a rerun
    reuses an embedding whichever backend computed it.
    """
    labels = bank.labels
    options = {**UMAP_DEFAULTS, **umap_kwargs}
    settings = {"bank": bank.meta.get("fingerprint") or str(bank.path), "created": bank.meta.get("created"),
                "layer": layer, "max_points": max_points, "seed": seed, "version": _VERSION, **options}
    cache = Path(cache_dir) / f"umap-{fingerprint(settings)}.npz"
    if cache.exists():
        try:
            with np.load(cache) as stored:
                return stored["points"], stored["labels"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # damaged: computed again
            pass
    index = subsample_indices(labels, bank.n, max_points, seed)
    points = umap_embedding(np.asarray(bank[layer])[index], seed=seed, backend=backend, **options)
    chosen_labels = labels[index] if labels is not None else np.zeros(len(index), dtype=np.int64)

    def write(handle):
        np.savez(handle, points=points, labels=chosen_labels, index=index)

    atomic_write(cache, write)
    return points, chosen_labels
