"""2-D UMAP embeddings of feature-bank layers, cached on disk.

umap-learn compiles its kernels with numba on first use (tens of seconds on a small CPU).
:func:`configure_numba_cache` points numba's on-disk cache at a user cache directory (unless
``NUMBA_CACHE_DIR`` is already set) before umap is imported, so the compiled code is reused by
the next report; the embeddings themselves are cached too, keyed by the bank's fingerprint, the
layer and the UMAP settings, so re-running a finished report recomputes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..io import atomic_write, fingerprint


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


def umap_embedding(
    features: np.ndarray,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "cosine",
    seed: int = 0,
) -> np.ndarray:
    """UMAP of ``features`` (n, d) to (n, 2), deterministic for a given seed."""
    configure_numba_cache()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # umap warns that a seed disables its parallelism
        import umap

        reducer = umap.UMAP(n_neighbors=min(n_neighbors, len(features) - 1), min_dist=min_dist,
                            metric=metric, random_state=seed, n_components=2)
        return reducer.fit_transform(np.asarray(features, dtype=np.float32)).astype(np.float32)


def cached_bank_embedding(
    bank,
    layer: str,
    cache_dir: str | Path,
    max_points: int = 5000,
    seed: int = 0,
    **umap_kwargs,
) -> tuple[np.ndarray, np.ndarray]:
    """(points (m, 2), labels (m,)) for a bank layer, computed once and cached in ``cache_dir``."""
    labels = bank.labels
    settings = {"bank": bank.meta.get("fingerprint") or str(bank.path), "created": bank.meta.get("created"),
                "layer": layer, "max_points": max_points, "seed": seed, **umap_kwargs}
    cache = Path(cache_dir) / f"umap-{fingerprint(settings)}.npz"
    if cache.exists():
        stored = np.load(cache)
        return stored["points"], stored["labels"]
    index = subsample_indices(labels, bank.n, max_points, seed)
    points = umap_embedding(np.asarray(bank[layer])[index], seed=seed, **umap_kwargs)
    chosen_labels = labels[index] if labels is not None else np.zeros(len(index), dtype=np.int64)

    def write(handle):
        np.savez(handle, points=points, labels=chosen_labels)

    atomic_write(cache, write)
    return points, chosen_labels
