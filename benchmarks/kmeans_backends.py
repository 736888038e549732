"""k-means with the torch backend against FAISS, on the same rows in the same run.

    python benchmarks/kmeans_backends.py                          # CPU: 50,000 x 512, k = 1000
    python benchmarks/kmeans_backends.py --n 1281167 --dim 2048 --device cuda   # ImageNet H bank

The torch backend (``clusterprobe/metrics/_torch_search.py``) is what clusters on a GPU when
FAISS has no GPU build. Its k-means++ seeding makes one pass over the rows per centroid (k
passes), so at k = 1000 it can cost more than the Lloyd iterations that follow; this prints where
the time goes:

- ``init``: k-means++ seeding alone, torch (on ``--device``; from its sample of
  ``seeding_sample_size(n, k)`` rows, every row up to 2**18) and FAISS (CPU, ``niter=0``, every row);
- ``lloyd``: one Lloyd iteration of the torch backend (the mean of ``--niter``);
- ``total``: ``kmeans(..., niter=--niter, tol=0)`` with each backend, init included, and the
  final objectives (different seeds' draws: equal only to within k-means's own spread).

Ratios: torch/FAISS for init and total, and init / one Lloyd iteration for the torch backend
(FAISS's own k-means++ is about one ``n d`` pass per centroid on one CPU thread).

``--non-resident`` times the case where the rows are not held on the device (a bank larger than
half the free GPU memory, or on the CPU a float16 bank over the working-memory budget; emulated
with float16 rows read from the host at every pass): k-means++ from its sample of
``seeding_sample_size(n, k)`` rows (read once) against k-means++ from every row (one read of the
bank per centroid: timed for ``--exact-k`` centroids and extrapolated to k, each pass costing the
same), and one streamed Lloyd iteration. The sample only applies above 2**18 rows, e.g.

    python benchmarks/kmeans_backends.py --non-resident --n 400000 --dim 64 --k 100 --skip-faiss
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clusterprobe.metrics import kmeans  # noqa: E402
from clusterprobe.metrics import _torch_search  # noqa: E402
from clusterprobe.metrics._device import faiss_module, resolve_device  # noqa: E402
from clusterprobe.metrics._stream import DeviceRows  # noqa: E402


def synthetic(n: int, dim: int, classes: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, dim), dtype=np.float32)
    X = rng.standard_normal((n, dim), dtype=np.float32)
    X += 2.0 * centers[rng.integers(0, classes, n)]
    return X


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--niter", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-faiss", action="store_true", help="torch only (FAISS on the CPU is slow at ImageNet size)")
    parser.add_argument("--non-resident", action="store_true",
                        help="also time seeding with the rows read from the host (float16), sample vs every row")
    parser.add_argument("--exact-k", type=int, default=20,
                        help="with --non-resident: centroids timed for seeding from every row (extrapolated to k)")
    args = parser.parse_args()

    device = resolve_device(args.device)
    X = synthetic(args.n, args.dim, args.k)
    print(f"rows {args.n} x {args.dim}, k {args.k}, device {device}, torch threads {torch.get_num_threads()}")
    if args.non_resident:
        non_resident(X, args.k, args.exact_k, args.niter, device)

    rows = DeviceRows(X, None, device, bytes_per_row=12.0 * args.k)
    print(f"torch rows resident on {device}: {rows.resident is not None}")
    centroids, t_init = timed(lambda: _torch_search.kmeans_plus_plus(rows, args.k, torch.Generator().manual_seed(1)))
    _, t_lloyd = timed(lambda: _torch_search.lloyd(rows, centroids, args.niter, 0.0, False, torch.Generator().manual_seed(1)))
    t_lloyd /= args.niter
    m = _torch_search.seeding_sample_size(args.n, args.k)
    print(f"torch: init {t_init:.2f} s (k-means++ from {m} of {args.n} rows), one Lloyd iteration {t_lloyd:.3f} s: "
          f"init = {t_init / t_lloyd:.1f} iterations")

    result_t, t_total_t = timed(lambda: kmeans(X, args.k, seeds=1, normalize=False, niter=args.niter, tol=0.0,
                                               device=str(device), backend="torch"))
    print(f"torch: kmeans total {t_total_t:.2f} s, objective {result_t.objective[0]:.6g}")
    if args.skip_faiss:
        return

    faiss = faiss_module()
    method = faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS

    def faiss_init():
        km = faiss.Kmeans(args.dim, args.k, niter=0, seed=1, init_method=method, min_points_per_centroid=1,
                          max_points_per_centroid=args.n // args.k + 1)
        km.train(X)
        return km

    _, f_init = timed(faiss_init)
    result_f, f_total = timed(lambda: kmeans(X, args.k, seeds=1, normalize=False, niter=args.niter, tol=0.0,
                                             device="cpu", backend="faiss"))
    print(f"FAISS (CPU): init {f_init:.2f} s, kmeans total {f_total:.2f} s, objective {result_f.objective[0]:.6g}")
    print(f"ratios torch/FAISS: init {t_init / f_init:.2f}, total {t_total_t / f_total:.2f}; "
          f"objective {result_t.objective[0] / result_f.objective[0]:.4f}")


def non_resident(X: np.ndarray, k: int, exact_k: int, niter: int, device: torch.device) -> None:
    """Seeding and one Lloyd iteration with the rows read from the host (float16) at every pass."""
    n = len(X)
    half = X.astype(np.float16)  # a float16 bank: no zero-copy view, every read widens a chunk
    rows = DeviceRows(half, None, device, bytes_per_row=12.0 * k, hold=False)
    m = _torch_search.seeding_sample_size(n, k)
    print(f"non-resident float16 rows: k-means++ sample {m} of {n} rows"
          + ("" if m < n else " (every row: the sample applies above 2**18 rows)"))
    sampled, t_sample = timed(lambda: _torch_search.kmeans_plus_plus(rows, k, torch.Generator().manual_seed(1)))
    few = max(2, min(k, exact_k))
    _, t_few = timed(lambda: _torch_search.kmeans_plus_plus(rows, few, torch.Generator().manual_seed(1), sample=n))
    t_exact = t_few / (few - 1) * (k - 1)  # (few - 1) passes over the rows took t_few
    _, t_lloyd = timed(lambda: _torch_search.lloyd(rows, sampled, niter, 0.0, False, torch.Generator().manual_seed(1)))
    t_lloyd /= niter
    print(f"non-resident: seeding from the sample {t_sample:.2f} s; from every row ~{t_exact:.1f} s "
          f"({few - 1} passes timed, {t_exact / (k - 1):.3f} s each): {t_exact / t_sample:.1f}x; "
          f"one streamed Lloyd iteration {t_lloyd:.2f} s (seeding = {t_sample / t_lloyd:.1f} iterations, "
          f"was ~{t_exact / t_lloyd:.0f})")


if __name__ == "__main__":
    main()
