"""FAISS and thread choices shared by the metrics (the torch device comes from :mod:`clusterprobe.devices`).

Import FAISS only through :func:`faiss_module`. It imports torch first: with pip wheels each
library ships its own OpenMP runtime, and importing FAISS before torch has crashed torch's
parallel kernels on some platforms (facebookresearch/faiss#4273). Importing torch first is the
order known to work everywhere; ``tests/test_metrics_clustering.py`` checks both orders here.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from functools import lru_cache

import torch

from ..devices import resolve_device

@lru_cache(maxsize=1)
def faiss_module():
    """The ``faiss`` module, imported after torch, with its CPU thread count set once.

    FAISS uses all cores by default; ``CLUSTERPROBE_FAISS_THREADS`` overrides that (e.g. when
    several evaluations share a machine).
    """
    import faiss  # noqa: F401  (torch is already imported at module level)

    threads = os.environ.get("CLUSTERPROBE_FAISS_THREADS")
    if threads:
        faiss.omp_set_num_threads(max(1, int(threads)))
    else:
        faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
    return faiss


# Below this many floating-point operations per parallel step, threads cost more than they
# save; worse, on a busy machine a spinning OpenMP barrier (torch and FAISS each run one) can
# make a millisecond of work take a second. Small problems therefore run on one thread.
SMALL_WORK = 5e7


@contextmanager
def threads_for(work: float):
    """Run the enclosed torch/FAISS calls on one thread when ``work`` (flops per step) is small."""
    if work >= SMALL_WORK:
        yield
        return
    faiss = faiss_module()
    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        faiss.omp_set_num_threads(faiss_threads)


def faiss_gpu_count() -> int:
    """Number of GPUs FAISS can use (0 with the faiss-cpu wheel or without a GPU)."""
    faiss = faiss_module()
    get = getattr(faiss, "get_num_gpus", None)
    try:
        return int(get()) if get is not None else 0
    except Exception:  # a GPU build without a driver
        return 0


def faiss_use_gpu(device: str = "auto") -> bool:
    """Whether FAISS should run on the GPU for ``device`` ('auto', 'cpu' or 'cuda')."""
    if resolve_device(device).type != "cuda":
        return False
    # torch has a GPU; with the faiss-cpu build FAISS still runs on the CPU.
    return faiss_gpu_count() > 0


#: Engines for k-means and exact nearest-neighbour search.
BACKENDS = ("auto", "faiss", "torch")


def search_backend(device: str = "auto", backend: str = "auto") -> str:
    """The engine for k-means and exact search on ``device``: 'faiss' (FAISS, on the GPU when
    its GPU build has one, else on the CPU) or 'torch' (:mod:`._torch_search`: torch matrix
    products on the device). ``backend='auto'`` picks torch on a CUDA device that FAISS cannot
    use (pip's faiss-cpu beside a GPU), FAISS otherwise; ``CLUSTERPROBE_SEARCH_BACKEND``
    (faiss or torch) overrides that choice for every metric."""
    if backend == "auto":
        backend = os.environ.get("CLUSTERPROBE_SEARCH_BACKEND", "").strip().lower() or "auto"
    if backend not in BACKENDS:
        from ._validation import MetricsError

        raise MetricsError(f"Unknown k-means/search backend {backend!r} (backend=, or CLUSTERPROBE_SEARCH_BACKEND): "
                          f"use one of {', '.join(BACKENDS)}.")
    if backend != "auto":
        return backend
    return "torch" if resolve_device(device).type == "cuda" and faiss_gpu_count() == 0 else "faiss"


def faiss_search(database, queries, k: int, inner_product: bool, device: str = "auto"):
    """Exact k-nearest-neighbour search with FAISS (GPU when available).

    ``database`` (n, d) and ``queries`` (m, d) are float32 arrays. Returns ``(scores, indices)``
    of shape (m, k): inner products (largest first) or squared L2 distances (smallest first).
    """
    import numpy as np

    faiss = faiss_module()
    database = np.ascontiguousarray(database, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    index = faiss.IndexFlatIP(database.shape[1]) if inner_product else faiss.IndexFlatL2(database.shape[1])
    if faiss_use_gpu(device):
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(database)
    scores, indices = index.search(queries, k)
    return scores, indices
