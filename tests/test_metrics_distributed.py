"""The exact silhouettes sharded over torch.distributed ranks: two torchrun processes (gloo, CPU),
each taking a share of the rows of a memory-mapped bank, give the single-process result; so does
the whole suite (``clusterprobe metrics`` and ``evaluate``) under torchrun, written once.

Run as a script by torchrun (``__main__`` below) and driven by the tests.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
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


def _torchrun(args: list[str], timeout: float = 240, processes: int | None = 2) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 ARGS`` (``processes=None``: plain ``python ARGS``), one thread each."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), CLUSTERPROBE_METRICS_MEMORY="64K",
               COLUMNS="200")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = ([torchrun, "--standalone", "--nproc_per_node", str(processes)] if processes
               else [sys.executable]) + args
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{command[0]} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-5000:]}")
    return result


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


# -- the suite under torchrun ---------------------------------------------------------------------
RUN_N = {"train": 500, "test": 300}
SILHOUETTES = ("silhouette_true", "silhouette_true_spread", "silhouette_kmeans", "silhouette_kmeans_spread")


def make_run(folder: Path) -> Path:
    """A run directory with train and test banks (layers H and Z, 6 classes) of epoch 1."""
    from clusterprobe import FeatureBank

    rng = np.random.default_rng(1)
    centers = rng.standard_normal((6, 24)).astype(np.float32)
    W = rng.standard_normal((24, 10)).astype(np.float32)
    run = folder / "run"
    for split, n in RUN_N.items():
        y = np.arange(n) % 6
        H = centers[y] + 0.8 * rng.standard_normal((n, 24)).astype(np.float32) + 2
        meta = {"dataset": {"name": "synthetic", "split": split}, "num_classes": 6,
                "checkpoint": {"path": str(run / "checkpoints" / "epoch_0001.pt"), "epoch": 1, "method": "resa",
                               "run": "run"}}
        FeatureBank.write(run / "features" / split / "epoch_0001", features={"H": H, "Z": np.maximum(H @ W, 0)},
                          labels=y, meta=meta)
    return run


def assert_same_table(table: pd.DataFrame, reference: pd.DataFrame) -> None:
    """Equal tables, silhouettes to 1e-6 (the cosine one sums its clusters in another order)."""
    assert list(table.columns) == list(reference.columns) and len(table) == len(reference)
    silhouettes = reference.metric.isin(SILHOUETTES).to_numpy()
    assert silhouettes.sum() >= 8
    np.testing.assert_array_equal(table.metric, reference.metric)
    for column in ("value", "std"):
        np.testing.assert_allclose(table[column][silhouettes], reference[column][silhouettes], rtol=0, atol=1e-6)
    pd.testing.assert_frame_equal(table[~silhouettes], reference[~silhouettes])
    others = [c for c in reference.columns if c not in ("value", "std")]
    pd.testing.assert_frame_equal(table[others], reference[others])


@pytest.mark.distributed
def test_metrics_command_under_torchrun_equals_one_process_and_writes_once(tmp_path):
    run = make_run(tmp_path)
    (tmp_path / "out").mkdir()
    args = ["-m", "cli.main", "metrics", str(run), "--distance", "euclidean", "--seeds", "2", "--threads", "1"]
    sharded = _torchrun(args + ["-o", str(tmp_path / "out" / "table.csv")])
    single = _torchrun(args + ["--no-cache", "-o", str(tmp_path / "single.csv")], processes=None)
    assert_same_table(pd.read_csv(tmp_path / "out" / "table.csv"), pd.read_csv(tmp_path / "single.csv"))
    # rank 0 alone printed, wrote the output and the cache (complete, and nothing else)
    for text in ("run · resa · epoch 1 · test", "cached in", "wrote"):
        assert sharded.stdout.count(text) == 1, (text, sharded.stdout)
    assert [row for row in sharded.stdout.splitlines() if "sil(km)" in row] == \
        [row for row in single.stdout.splitlines() if "sil(km)" in row]
    assert sorted(os.listdir(tmp_path / "out")) == ["table.csv"]
    assert sorted(os.listdir(run)) == ["features", "metrics.csv"]
    cache = pd.read_csv(run / "metrics.csv")
    assert len(cache) == len(pd.read_csv(tmp_path / "single.csv"))


@pytest.mark.distributed
def test_evaluate_under_torchrun_shares_silhouettes_and_stops_every_rank_on_errors(tmp_path):
    run = make_run(tmp_path)
    _torchrun([__file__, "suite", str(tmp_path)])
    ranks = [pickle.loads((tmp_path / f"suite{rank}.pkl").read_bytes()) for rank in (0, 1)]
    reference = ranks[0]["single"]
    for rank in ranks:
        for name in ("first", "cached"):  # every rank returns rank 0's table, equal to one process's
            assert_same_table(rank[name], reference)
            pd.testing.assert_frame_equal(rank[name], ranks[0]["first"])
        assert rank["first"].attrs["cache"] == str(tmp_path / "suite.metrics.csv")
        assert rank["after"] == 4  # the group still works after the failures below
    cache = pd.read_csv(tmp_path / "suite.metrics.csv")
    assert len(cache) == len(reference)
    # progress on rank 0 only; the second call was answered from the cache
    assert ranks[1]["progress"] == []
    first, cached = ranks[0]["progress"]
    assert any("silhouette_true, silhouette_kmeans (silhouettes over 2 ranks)" in m for m in first)
    assert cached == []
    # a rank whose features differ: both stop, each saying why
    assert "Rank 1 has other features than rank 0" in ranks[1]["different data"]
    assert "Rank 1 could not read the features" in ranks[0]["different data"]
    # rank 0 fails in the suite: the other rank stops too, with rank 0's reason
    assert ranks[0]["rank 0 fails"].startswith("k = 10000 clusters is larger than the number of samples")
    assert ranks[1]["rank 0 fails"].startswith("Rank 0 stopped the metrics suite (MetricsError: k = 10000")
    # rank 1 fails while preparing
    assert "Rank 1 could not prepare the metrics suite" in ranks[0]["rank 1 fails"]
    assert "missing" in ranks[1]["rank 1 fails"]


def _suite_worker(folder: Path) -> None:
    """One torchrun rank of the suite test: results and error messages into suite<rank>.pkl."""
    from clusterprobe import distributed as _distributed
    from clusterprobe.metrics import clustering, evaluate, evaluate_arrays, probes

    env = _distributed.init_distributed("cpu")
    if env.rank != 0:  # only rank 0 clusters and fits probes: the others would fail here
        def forbidden(*args, **kwargs):
            raise AssertionError(f"rank {env.rank} must not compute this")

        clustering._kmeans = probes._linear_probe = probes._knn_accuracy = forbidden
    out, progress = {}, []
    options = dict(seeds=2, cache=folder / "suite.metrics.csv")  # cosine silhouettes (the command's test: Euclidean)
    try:
        for name in ("first", "cached"):
            progress.append([])
            out[name] = evaluate(folder / "run", progress=progress[-1].append, **options)
        out["progress"] = progress if env.rank == 0 else [m for p in progress for m in p]
        if env.rank == 0:  # one process, in this very process (the group is not used)
            out["single"] = evaluate(folder / "run", distributed=False, **dict(options, cache=False))
        X = np.random.default_rng(env.rank).standard_normal((60, 5)).astype(np.float32)
        failures = {
            "different data": lambda: evaluate_arrays(X, np.arange(60) % 3, metrics="silhouette_true"),
            "rank 0 fails": lambda: evaluate(folder / "run", metrics="nmi", k=10_000, cache=False),
            "rank 1 fails": lambda: evaluate(folder / ("run" if env.rank == 0 else "missing"), cache=False),
        }
        for name, call in failures.items():
            try:
                call()
            except Exception as error:  # noqa: BLE001 - the message is what is tested
                out[name] = str(error)
            else:
                out[name] = "no error"
        X = np.random.default_rng(0).standard_normal((60, 5)).astype(np.float32)
        out["after"] = len(evaluate_arrays(X, np.arange(60) % 3, metrics="silhouette"))
        (folder / f"suite{env.rank}.pkl").write_bytes(pickle.dumps(out))
    finally:
        _distributed.shutdown(env)


if __name__ == "__main__":  # torchrun worker
    import torch

    from clusterprobe import distributed as _distributed

    torch.set_num_threads(1)
    if sys.argv[1] == "suite":
        _suite_worker(Path(sys.argv[2]))
        sys.exit(0)
    target = Path(sys.argv[1])
    environment = _distributed.init_distributed("cpu")
    try:
        result = silhouettes(target, distributed=True)
        np.savez(target / f"rank{environment.rank}.npz", **result)
    finally:
        _distributed.shutdown(environment)
