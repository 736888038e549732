"""The exact silhouettes sharded over torch.distributed ranks: two torchrun processes (gloo, CPU),
each taking a share of the rows of a memory-mapped bank, give the single-process result.

Run as a script by torchrun (``__main__`` below) and driven by the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
N, D = 1500, 40


def make_bank(folder: Path) -> None:
    rng = np.random.default_rng(0)
    centers = 2 * rng.standard_normal((8, D)).astype(np.float32)
    y = rng.integers(0, 8, N)
    X = centers[y] + 2 * rng.standard_normal((N, D)).astype(np.float32) + 3
    np.save(folder / "X.npy", X.astype(np.float32))
    np.save(folder / "labels.npy", np.stack([y, rng.integers(0, 5, N)]))


def silhouettes(folder: Path, distributed: bool) -> dict[str, np.ndarray]:
    from clusterprobe.metrics import silhouette_samples_multi, silhouette_stats_multi

    X = np.load(folder / "X.npy", mmap_mode="r")
    labels = list(np.load(folder / "labels.npy"))
    out = {}
    for metric in ("euclidean", "cosine"):
        # small blocks (Euclidean) and a small budget (cosine): several chunks per rank
        values = silhouette_samples_multi(X, labels, metric=metric, device="cpu", block_size=128,
                                          distributed=distributed)
        for i, v in enumerate(values):
            out[f"{metric}_{i}"] = v
        stats = silhouette_stats_multi(X, labels, metric=metric, device="cpu", distributed=distributed)
        out[f"{metric}_stats"] = np.array([[s.mean, s.std] for s in stats])
    return out


def _torchrun(args: list[str], timeout: float = 240) -> None:
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), CLUSTERPROBE_METRICS_MEMORY="64K")
    command = [torchrun, "--standalone", "--nproc_per_node", "2"] + args
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"torchrun failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")


@pytest.mark.distributed
def test_sharded_silhouettes_equal_one_process(tmp_path, monkeypatch):
    import torch

    make_bank(tmp_path)
    _torchrun([__file__, str(tmp_path)])
    monkeypatch.setenv("CLUSTERPROBE_METRICS_MEMORY", "64K")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = silhouettes(tmp_path, distributed=False)
    finally:
        torch.set_num_threads(threads)
    for rank in (0, 1):
        sharded = np.load(tmp_path / f"rank{rank}.npz")
        assert sorted(sharded.files) == sorted(single)
        for key, value in single.items():
            if key.startswith("euclidean"):  # every row's sums are made exactly as in one process
                np.testing.assert_array_equal(sharded[key], value, err_msg=key)
            else:  # the cluster sums are added in another order: equal to rounding
                np.testing.assert_allclose(sharded[key], value, rtol=1e-12, atol=1e-14, err_msg=key)


def test_distributed_without_a_process_group_says_what_to_do():
    from clusterprobe.metrics import MetricsError, silhouette_score

    X = np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32)
    with pytest.raises(MetricsError, match="torchrun"):
        silhouette_score(X, np.arange(20) % 2, distributed=True)


if __name__ == "__main__":  # torchrun worker
    import torch

    from clusterprobe import distributed as _distributed

    torch.set_num_threads(1)
    target = Path(sys.argv[1])
    environment = _distributed.init_distributed("cpu")
    try:
        result = silhouettes(target, distributed=True)
        np.savez(target / f"rank{environment.rank}.npz", **result)
    finally:
        _distributed.shutdown(environment)
