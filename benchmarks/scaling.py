"""How each metric's time and memory grow with the number of samples, and what that predicts for
ImageNet (1,281,167 x 2048, 1,000 classes) before anyone rents a GPU.

    python benchmarks/scaling.py                                   # n = 10k, 50k, 200k (CPU: long)
    python benchmarks/scaling.py --sizes 5000,10000,20000          # a quick look
    python benchmarks/scaling.py --sizes 10000,50000,200000,1281167 --device cuda   # on a GPU

For every size n, synthetic clustered features (``--dim`` 2048, ``--classes`` 1000 Gaussian
classes) are made once per measurement in a fresh process, and each metric is timed alone in that
process: its wall time and its peak resident memory beyond the features (the kernel's peak-RSS
counter is reset after the data are made; where it cannot be reset the peak includes them, and
the table says so). The metrics and the work measured:

- ``kmeans``: FAISS k-means, k = classes, ``--seeds`` seeds, exactly ``--kmeans-niter``
  iterations each (tol 0); the suite runs up to 100 (it stops earlier once converged), so the
  100-iteration figure is an upper bound: ``time x 100 / niter``.
- ``nmi_ari``: NMI and ARI of one labelling against the classes.
- ``silhouette``: exact cosine silhouette against the classes and against ``--seeds`` k-means
  labellings (one pass over the data for all of them, as the suite computes it).
- ``linear``: the L-BFGS linear probe, exactly ``--probe-iter`` iterations (tol 0), trained on
  n and scored on a test set of n / 25 (ImageNet's 50,000 / 1,281,167); the suite runs to
  convergence (typically 25-100 iterations).
- ``knn``: weighted-cosine 20-NN, the test set (n / 25) against the n train features.

Then the growth exponent b of each metric (time ~ n^b, least squares on log-log) and the
extrapolation to ``--target`` samples. The exponent, not any one timing, is the point: these
machines are noisy and shared.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("kmeans", "nmi_ari", "silhouette", "linear", "knn")
IMAGENET = 1_281_167


# -- the worker: one metric at one size, in its own process --------------------------------------
def synthetic(n: int, dim: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(X (n, dim) float32, y (n,) int64): Gaussian classes, made in chunks to bound memory."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, dim), dtype=np.float32)
    y = rng.integers(0, classes, n)
    X = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 65536):
        stop = min(n, start + 65536)
        X[start:stop] = centers[y[start:stop]] + 1.5 * rng.standard_normal((stop - start, dim), dtype=np.float32)
    return X, y


def _status(field: str) -> float | None:
    """A field of /proc/self/status in MiB (VmRSS, VmHWM), or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def worker(args: argparse.Namespace) -> dict:
    import torch  # noqa: F401  (torch before faiss, see clusterprobe/metrics/_device.py)

    from clusterprobe.metrics import ari, kmeans, knn_accuracy, linear_probe, nmi, silhouette_stats_multi

    n, n_test = args.n, max(args.classes, args.n // 25)
    X, y = synthetic(n, args.dim, args.classes, seed=0)
    X_test, y_test = synthetic(n_test, args.dim, args.classes, seed=1) if args.metric in ("linear", "knn") else (None, None)
    rng = np.random.default_rng(2)
    other = [rng.integers(0, args.classes, n) for _ in range(args.seeds)]  # stands in for k-means labels
    features_mib = (X.nbytes + (0 if X_test is None else X_test.nbytes)) / 2**20
    baseline = _status("VmRSS")
    reset = _reset_peak()
    start = time.perf_counter()
    if args.metric == "kmeans":
        kmeans(X, args.classes, seeds=args.seeds, niter=args.kmeans_niter, tol=0.0, device=args.device)
    elif args.metric == "nmi_ari":
        nmi(y, other[0]), ari(y, other[0])
    elif args.metric == "silhouette":
        silhouette_stats_multi(X, [y, *other], metric="cosine", device=args.device)
    elif args.metric == "linear":
        linear_probe(X, y, X_test, y_test, max_iter=args.probe_iter, tol=0.0, device=args.device)
    elif args.metric == "knn":
        knn_accuracy(X, y, X_test, y_test, device=args.device)
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    beyond = None if peak is None or baseline is None else max(0.0, peak - baseline)
    return {"metric": args.metric, "n": n, "seconds": seconds, "peak_beyond_mib": beyond,
            "features_mib": features_mib, "peak_reset": reset}


# -- the driver -------------------------------------------------------------------------------------
def measure(metric: str, n: int, args: argparse.Namespace) -> dict | None:
    command = [sys.executable, __file__, "--worker", metric, "--n", str(n), "--dim", str(args.dim),
               "--classes", str(args.classes), "--seeds", str(args.seeds), "--kmeans-niter",
               str(args.kmeans_niter), "--probe-iter", str(args.probe_iter), "--device", args.device]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        print(f"  {metric:<11} n={n:>9,}: over the {args.timeout} s limit", flush=True)
        return None
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"  {metric:<11} n={n:>9,}: failed ({reason})", flush=True)
        return None
    row = json.loads(result.stdout.strip().splitlines()[-1])
    memory = "?" if row["peak_beyond_mib"] is None else f"{row['peak_beyond_mib']:.0f} MiB"
    print(f"  {metric:<11} n={n:>9,}: {row['seconds']:9.2f} s, peak {memory} beyond the "
          f"{row['features_mib']:.0f} MiB of features", flush=True)
    return row


def growth(rows: list[dict], key: str) -> float | None:
    """Least-squares exponent b of ``key`` ~ n^b over the rows (None with fewer than 2 sizes)."""
    points = [(r["n"], r[key]) for r in rows if r.get(key) and r[key] > 0]
    if len(points) < 2:
        return None
    n, value = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return float(np.polyfit(n, value, 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,50000,200000", help="comma-separated sample counts")
    parser.add_argument("--metrics", default=",".join(METRICS), help=f"any of {', '.join(METRICS)}")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--kmeans-niter", type=int, default=10)
    parser.add_argument("--probe-iter", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--target", type=int, default=IMAGENET, help="extrapolate to this many samples")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per measurement")
    parser.add_argument("--worker", choices=METRICS, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.metric = args.worker
        print(json.dumps(worker(args)))
        return

    sizes = sorted(int(s) for s in args.sizes.split(","))
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        parser.error(f"unknown metrics {unknown}; choose from {', '.join(METRICS)}")
    import torch

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, cuda {torch.cuda.is_available()}; d = {args.dim}, k = {args.classes}, "
          f"{args.seeds} seeds, k-means {args.kmeans_niter} iterations, probe {args.probe_iter} iterations",
          flush=True)
    results: dict[str, list[dict]] = {m: [] for m in metrics}
    for n in sizes:
        print(f"n = {n:,}", flush=True)
        for metric in metrics:
            row = measure(metric, n, args)
            if row is not None:
                results[metric].append(row)

    print(f"\ngrowth and extrapolation to n = {args.target:,} (time ~ n^b from the sizes measured)")
    print(f"{'metric':<11} {'b (time)':>9} {'b (memory)':>11} {'time at target':>16} {'memory at target':>17}")
    for metric, rows in results.items():
        b_time, b_memory = growth(rows, "seconds"), growth(rows, "peak_beyond_mib")
        if not rows or b_time is None:
            print(f"{metric:<11} {'-':>9}")
            continue
        last = rows[-1]
        scale = args.target / last["n"]
        seconds = last["seconds"] * scale ** b_time
        if metric == "kmeans":
            seconds *= 100 / args.kmeans_niter  # the suite's 100-iteration upper bound
        memory = "-" if b_memory is None else f"{last['peak_beyond_mib'] * scale ** max(b_memory, 0):,.0f} MiB"
        print(f"{metric:<11} {b_time:9.2f} {('-' if b_memory is None else f'{b_memory:.2f}'):>11} "
              f"{seconds / 60:13.1f} min {memory:>17}")
    if not all(r["peak_reset"] for rows in results.values() for r in rows):
        print("note: the peak-RSS counter could not be reset here; peaks include making the data.")
    print("k-means at target: scaled to 100 iterations (the suite's upper bound); linear: "
          f"{args.probe_iter} L-BFGS iterations (the suite runs to convergence, typically 25-100).")


if __name__ == "__main__":
    main()
