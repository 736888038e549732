"""How each metric's time and memory grow with the number of samples, and what that predicts for
ImageNet (1,281,167 x 2048, 1,000 classes) before anyone rents a GPU.

    python benchmarks/scaling.py                                   # n = 10k, 50k, 200k (CPU: long)
    python benchmarks/scaling.py --sizes 5000,10000,20000          # a quick look
    python benchmarks/scaling.py --sizes 10000,50000,200000,1281167 --device cuda   # on a GPU

For every size n, synthetic clustered features (``--dim`` 2048, ``--classes`` 1000 Gaussian
classes) are made once per measurement in a fresh process and, by default (``--input memmap``),
written to a scratch ``.npy`` and opened read-only memory-mapped, as a feature bank hands them out
(``--input array`` keeps them in memory); ``--dtype float16`` stores them as a float16 bank
does (half the bytes; the metrics widen each chunk to float32). Each metric is timed alone in that process, with its
peak extra memory: ``anon``, the peak of the process's anonymous resident memory (RssAnon,
sampled every 2 ms: NumPy, torch and FAISS allocations alike, not the file pages of the memory
map, which the kernel may drop) beyond what it was before the metric, and ``numpy``, the peak of
NumPy's allocations under tracemalloc. ``--code DIR`` imports ``clusterprobe`` from another
checkout (e.g. ``git archive`` of an older commit) to compare before and after. The metrics and
the work measured:

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
- ``silhouette_euclidean`` (not run by default: O(n^2 d)): the exact Euclidean silhouette, same
  labellings as ``silhouette``.

Then the growth exponents b of each metric's time and anonymous memory (~ n^b, least squares on
log-log) and the extrapolation to ``--target`` samples. The exponent, not any one timing, is the point: these
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
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("kmeans", "nmi_ari", "silhouette", "linear", "knn", "silhouette_euclidean")
DEFAULT_METRICS = METRICS[:5]
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
    """A field of /proc/self/status in MiB (VmRSS, VmHWM, RssAnon), or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class AnonPeak:
    """Peak anonymous resident memory (RssAnon) while running, sampled every ``interval`` s."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak = interval, _status("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            value = _status("RssAnon")
            if value is not None and (self.peak is None or value > self.peak):
                self.peak = value
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        value = _status("RssAnon")
        if value is not None and self.peak is not None:
            self.peak = max(self.peak, value)


def warm_up(args: argparse.Namespace, X, y, X_test, y_test) -> None:
    """Run the metric once on a few rows, unmeasured: first calls import modules (torch.optim,
    FAISS, scikit-learn) and fill caches, which would otherwise count as the metric's time and memory."""
    from clusterprobe.metrics import kmeans, knn_accuracy, linear_probe, silhouette_stats_multi

    rows = min(args.n, 4 * args.classes)
    Xw, yw = np.array(X[:rows]), np.arange(rows) % args.classes
    if args.metric == "kmeans":
        kmeans(Xw, args.classes, seeds=1, niter=1, tol=0.0, device=args.device)
    elif args.metric.startswith("silhouette"):
        silhouette_stats_multi(Xw, [yw], metric="euclidean" if args.metric.endswith("euclidean") else "cosine",
                               device=args.device)
    elif args.metric == "linear":
        linear_probe(Xw, yw, Xw, yw, max_iter=1, tol=0.0, device=args.device)
    elif args.metric == "knn":
        knn_accuracy(Xw, yw, Xw, yw, device=args.device)


def worker(args: argparse.Namespace) -> dict:
    import torch  # noqa: F401  (torch before faiss, see clusterprobe/metrics/_device.py)

    from clusterprobe.metrics import ari, kmeans, knn_accuracy, linear_probe, nmi, silhouette_stats_multi

    n, n_test = args.n, max(args.classes, args.n // 25)
    X, y = synthetic(n, args.dim, args.classes, seed=0)
    probe = args.metric in ("linear", "knn")
    X_test, y_test = synthetic(n_test, args.dim, args.classes, seed=1) if probe else (None, None)
    rng = np.random.default_rng(2)
    other = [rng.integers(0, args.classes, n) for _ in range(args.seeds)]  # stands in for k-means labels
    if args.dtype == "float16":  # as a float16 bank (extract --dtype float16)
        X = X.astype(np.float16)
        X_test = None if X_test is None else X_test.astype(np.float16)
    features_mib = (X.nbytes + (0 if X_test is None else X_test.nbytes)) / 2**20
    scratch = None
    if args.input == "memmap":  # as a feature bank: read-only memory maps of .npy files
        scratch = tempfile.TemporaryDirectory(prefix="scaling-")
        np.save(Path(scratch.name) / "X.npy", X)
        X = np.load(Path(scratch.name) / "X.npy", mmap_mode="r")
        if X_test is not None:
            np.save(Path(scratch.name) / "X_test.npy", X_test)
            X_test = np.load(Path(scratch.name) / "X_test.npy", mmap_mode="r")
    warm_up(args, X, y, X_test, y_test)
    import gc

    gc.collect()
    baseline = _status("RssAnon")
    tracemalloc.start()
    start = time.perf_counter()
    with AnonPeak() as anon:
        if args.metric == "kmeans":
            kmeans(X, args.classes, seeds=args.seeds, niter=args.kmeans_niter, tol=0.0, device=args.device)
        elif args.metric == "nmi_ari":
            nmi(y, other[0]), ari(y, other[0])
        elif args.metric == "silhouette":
            silhouette_stats_multi(X, [y, *other], metric="cosine", device=args.device)
        elif args.metric == "silhouette_euclidean":
            silhouette_stats_multi(X, [y, *other], metric="euclidean", device=args.device)
        elif args.metric == "linear":
            linear_probe(X, y, X_test, y_test, max_iter=args.probe_iter, tol=0.0, device=args.device)
        elif args.metric == "knn":
            knn_accuracy(X, y, X_test, y_test, device=args.device)
    seconds = time.perf_counter() - start
    _, numpy_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    beyond = None if anon.peak is None or baseline is None else max(0.0, anon.peak - baseline)
    if scratch is not None:
        scratch.cleanup()
    return {"metric": args.metric, "n": n, "seconds": seconds, "peak_beyond_mib": beyond,
            "numpy_peak_mib": numpy_peak / 2**20, "features_mib": features_mib,
            "input": f"{args.input} {args.dtype}"}


# -- the driver -------------------------------------------------------------------------------------
def measure(metric: str, n: int, args: argparse.Namespace) -> dict | None:
    command = [sys.executable, __file__, "--worker", metric, "--n", str(n), "--dim", str(args.dim),
               "--classes", str(args.classes), "--seeds", str(args.seeds), "--kmeans-niter",
               str(args.kmeans_niter), "--probe-iter", str(args.probe_iter), "--device", args.device,
               "--input", args.input, "--dtype", args.dtype]
    env = {**os.environ, "PYTHONPATH": str(Path(args.code).resolve() if args.code else ROOT)}
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
    print(f"  {metric:<11} n={n:>9,}: {row['seconds']:9.2f} s, peak extra memory {memory} anon, "
          f"{row['numpy_peak_mib']:.0f} MiB numpy (features: {row['features_mib']:.0f} MiB, {row['input']})",
          flush=True)
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
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS), help=f"any of {', '.join(METRICS)}")
    parser.add_argument("--input", choices=("memmap", "array"), default="memmap",
                        help="features as a read-only memory map of a .npy file (a bank) or in memory")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                        help="storage type of the features (a float16 bank: half the bytes)")
    parser.add_argument("--code", help="import clusterprobe from this directory (another checkout)")
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
          f"{torch.get_num_threads()}, cuda {torch.cuda.is_available()}; {args.dtype} {args.input}, d = {args.dim}, k = {args.classes}, "
          f"{args.seeds} seeds, k-means {args.kmeans_niter} iterations, probe {args.probe_iter} iterations",
          flush=True)
    results: dict[str, list[dict]] = {m: [] for m in metrics}
    for n in sizes:
        print(f"n = {n:,}", flush=True)
        for metric in metrics:
            row = measure(metric, n, args)
            if row is not None:
                results[metric].append(row)

    print(f"\ngrowth and extrapolation to n = {args.target:,} (time, anonymous memory ~ n^b from the sizes measured)")
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
    print("k-means at target: scaled to 100 iterations (the suite's upper bound); linear: "
          f"{args.probe_iter} L-BFGS iterations (the suite runs to convergence, typically 25-100).")


if __name__ == "__main__":
    main()
