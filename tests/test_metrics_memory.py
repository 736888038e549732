"""Metrics on memory-mapped features stay within their stated memory bound, with the same results.

Each metric runs on a read-only memory map (as a feature bank hands out) under tracemalloc with
a small working-memory budget; the peak of NumPy's allocations must stay well below one copy of
the features (n d 4 bytes), which every metric used to make (a normalised or standardised copy,
an n x K matrix of summed distances, n x d finiteness flags, a hold-out copy). tracemalloc sees
NumPy's allocations, not torch's or FAISS's; ``benchmarks/scaling.py`` measures all of them.
The results are compared with the ones computed in one chunk (the previous behaviour) and with
scikit-learn.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from sklearn.metrics import silhouette_samples as sk_samples

from clusterprobe.metrics import (
    kmeans,
    knn_accuracy,
    linear_probe,
    silhouette_samples_multi,
    silhouette_stats_multi,
)
from clusterprobe.metrics import _stream
from clusterprobe.metrics._validation import as_features

N, D, K = 3000, 256, 12
COPY = N * D * 4  # bytes of one float32 copy of the features (3 MiB)
BOUND = COPY // 4  # what the streamed metrics may allocate here: O(n) outputs and small chunks


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    """A memory-mapped (N, D) float32 "bank" of K noisy classes, its labels and test rows."""
    rng = np.random.default_rng(0)
    centers = 2 * rng.standard_normal((K, D)).astype(np.float32)
    y = rng.integers(0, K, N)
    X = centers[y] + 3 * rng.standard_normal((N, D)).astype(np.float32) + 4
    X[5] = 0  # an all-zero row: cosine distance 1 to everything
    y_test = rng.integers(0, K, 600)
    X_test = centers[y_test] + 3 * rng.standard_normal((600, D)).astype(np.float32) + 4
    folder = tmp_path_factory.mktemp("bank")
    np.save(folder / "X.npy", X.astype(np.float32))
    np.save(folder / "X_test.npy", X_test.astype(np.float32))
    return (np.load(folder / "X.npy", mmap_mode="r"), y, np.load(folder / "X_test.npy", mmap_mode="r"), y_test,
            rng.integers(0, 5, N))


@pytest.fixture
def small_budget(monkeypatch):
    """A 96 KiB working-memory budget: chunks of a few hundred rows, everything streamed."""
    monkeypatch.delenv("CLUSTERPROBE_METRICS_MEMORY", raising=False)
    monkeypatch.setattr(_stream, "MEMORY", 96 * 2**10)


def peak_bytes(fn):
    """(result of fn(), peak bytes NumPy/Python allocated while it ran).

    fn runs once before, unmeasured: its first call imports modules and fills caches.
    """
    fn()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def one_chunk(monkeypatch, fn):
    """fn() with a budget larger than anything here: every metric in one chunk, as before."""
    with monkeypatch.context() as m:
        m.setattr(_stream, "MEMORY", 2**34)
        return fn()


def test_the_budget_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("CLUSTERPROBE_METRICS_MEMORY", "64M")
    assert _stream.memory_budget() == 64 * 2**20
    monkeypatch.setenv("CLUSTERPROBE_METRICS_MEMORY", "1.5GiB")
    assert _stream.memory_budget() == int(1.5 * 2**30)
    monkeypatch.setenv("CLUSTERPROBE_METRICS_MEMORY", "lots")
    with pytest.raises(ValueError, match="256M"):
        _stream.memory_budget()
    monkeypatch.delenv("CLUSTERPROBE_METRICS_MEMORY")
    assert _stream.memory_budget() == _stream.MEMORY
    assert _stream.chunk_rows(1000, memory=10_000_000, multiple=1024) == 9216


def test_a_memory_map_is_checked_without_a_copy(bank, small_budget):
    X = bank[0]
    checked, peak = peak_bytes(lambda: as_features(X))
    assert np.shares_memory(checked, X)
    assert peak < BOUND  # np.isfinite(X) alone was N x D booleans


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_silhouettes_stream(bank, small_budget, monkeypatch, metric):
    X, y, _, _, other = bank
    labels = [y, other]
    streamed, peak = peak_bytes(lambda: silhouette_samples_multi(X, labels, metric=metric, device="cpu",
                                                                 block_size=256))
    assert peak < BOUND  # the cosine sums were (N, K) float64, the Euclidean path copied X sorted
    whole = one_chunk(monkeypatch, lambda: silhouette_samples_multi(X, labels, metric=metric, device="cpu"))
    for ours, previous, labelling in zip(streamed, whole, labels):
        reference = sk_samples(np.asarray(X, dtype=np.float64), labelling, metric=metric)
        assert np.abs(ours - reference).max() < 1e-6
        assert np.abs(ours - previous).max() < 1e-7


def test_euclidean_silhouette_of_normalised_rows_needs_no_normalised_copy(bank, small_budget, monkeypatch):
    from clusterprobe.linalg import l2_normalize
    from clusterprobe.metrics import silhouette
    from clusterprobe.metrics.silhouette import _stats_multi

    X, y, _, _, _ = bank
    monkeypatch.setattr(silhouette, "_default_block", lambda device: 256)  # blocks of 256 rows, not 4096
    (stats,), peak = peak_bytes(lambda: _stats_multi(X, [y], "euclidean", None, 0, "cpu", normalize=True))
    assert peak < BOUND
    reference = sk_samples(l2_normalize(np.asarray(X, dtype=np.float64)), y)
    assert stats.mean == pytest.approx(reference.mean(), abs=1e-6)


def test_kmeans_normalises_into_a_scratch_file(bank, small_budget, monkeypatch, tmp_path):
    X = bank[0]
    monkeypatch.setenv("CLUSTERPROBE_SCRATCH", str(tmp_path))
    streamed, peak = peak_bytes(lambda: kmeans(X, K, seeds=2, niter=10, device="cpu"))
    assert peak < BOUND  # l2_normalize(X) was a full copy
    assert list(tmp_path.iterdir()) == []  # the scratch file is gone
    whole = one_chunk(monkeypatch, lambda: kmeans(X, K, seeds=2, niter=10, device="cpu"))
    np.testing.assert_array_equal(streamed.labels, whole.labels)
    np.testing.assert_array_equal(streamed.centroids, whole.centroids)
    np.testing.assert_array_equal(streamed.objective, whole.objective)


def test_torch_kmeans_seeds_from_a_sample_within_the_budget(bank, small_budget, monkeypatch):
    """The torch backend on a memory map too large for the budget: its k-means++ sample (768 rows,
    768 KiB here, as 262,144 rows and 2 GiB of an ImageNet bank) is itself over the 96 KiB budget,
    so it is read a chunk at a time like the rows, never copied whole; seeds and clusterings equal
    those made with everything in memory."""
    from clusterprobe.metrics import _torch_search
    from clusterprobe.metrics._stream import DeviceRows

    X = bank[0]
    monkeypatch.setattr(_torch_search, "SEED_MIN_POINTS", 0)
    monkeypatch.setattr(_torch_search, "SEED_POINTS_PER_CENTROID", 64)
    assert _torch_search.seeding_sample_size(N, K) == 768
    cpu = torch.device("cpu")

    def seeds():
        rows = DeviceRows(X, None, cpu, normalize=True)
        return _torch_search.kmeans_plus_plus(rows, K, torch.Generator().manual_seed(0)).numpy()

    streamed, peak = peak_bytes(seeds)
    assert peak < BOUND  # the sample gathered whole would be a quarter of a copy of X: 768 KiB
    np.testing.assert_array_equal(streamed, one_chunk(monkeypatch, seeds))
    run = lambda: kmeans(X, K, seeds=2, niter=10, device="cpu", backend="torch")  # noqa: E731
    clustered, peak = peak_bytes(run)
    assert peak < BOUND
    whole = one_chunk(monkeypatch, run)
    np.testing.assert_array_equal(clustered.labels, whole.labels)
    np.testing.assert_allclose(clustered.centroids, whole.centroids, atol=1e-6)


@pytest.mark.parametrize("protocol", ["weighted-cosine", "majority-euclidean"])
def test_knn_streams(bank, small_budget, monkeypatch, protocol):
    from sklearn.neighbors import KNeighborsClassifier

    X, y, X_test, y_test, _ = bank
    streamed, peak = peak_bytes(lambda: knn_accuracy(X, y, X_test, y_test, protocol=protocol, device="cpu"))
    assert peak < BOUND  # both sets were normalised whole, and the votes were (m, C) at once
    whole = one_chunk(monkeypatch, lambda: knn_accuracy(X, y, X_test, y_test, protocol=protocol, device="cpu"))
    assert (streamed.top1, streamed.top5) == (whole.top1, whole.top5)
    if protocol == "majority-euclidean":
        sk = KNeighborsClassifier(5).fit(np.asarray(X), y)
    else:
        sk = KNeighborsClassifier(20, metric="cosine", weights=lambda d: np.exp((1 - d) / 0.07)).fit(np.asarray(X), y)
    assert streamed.top1 == pytest.approx(sk.score(np.asarray(X_test), y_test), abs=1e-12)
    # a hold-out split reads rows of the memory map instead of copying them
    held, peak = peak_bytes(lambda: knn_accuracy(X, y, protocol=protocol, device="cpu"))
    assert peak < BOUND
    assert held.top1 == one_chunk(monkeypatch, lambda: knn_accuracy(X, y, protocol=protocol, device="cpu")).top1


def test_linear_probe_streams(bank, small_budget, monkeypatch):
    X, y, X_test, y_test, _ = bank
    streamed, peak = peak_bytes(lambda: linear_probe(X, y, X_test, y_test, device="cpu"))
    assert peak < BOUND  # the standardised copy of X alone was COPY bytes
    whole = one_chunk(monkeypatch, lambda: linear_probe(X, y, X_test, y_test, device="cpu"))
    assert streamed.top1 == pytest.approx(whole.top1, abs=1 / 600)
    assert streamed.top5 == pytest.approx(whole.top5, abs=1 / 600)
    held, peak = peak_bytes(lambda: linear_probe(X, y, device="cpu"))
    assert peak < BOUND
    assert held.top1 == pytest.approx(one_chunk(monkeypatch, lambda: linear_probe(X, y, device="cpu")).top1,
                                      abs=1 / 600)


def test_streamed_lbfgs_solves_the_same_problem(bank, small_budget):
    """The chunked loss and gradient are the full-batch ones, and L-BFGS reaches the same optimum."""
    import torch

    from clusterprobe.metrics.probes import _fit_lbfgs, _loss_and_grad, _loss_and_grad_rows, _standardization
    from clusterprobe.metrics._stream import DeviceRows

    X, y, _, _, _ = bank
    scale = _standardization(X)
    target = torch.from_numpy(y)
    rows = DeviceRows(X, scale, torch.device("cpu"), bytes_per_row=12 * K)
    assert rows.resident is None and rows.chunk < N  # really streamed
    full = torch.from_numpy((np.asarray(X) - scale[0]) * scale[1])
    W0 = 0.01 * torch.randn(D, K, generator=torch.Generator().manual_seed(0))
    b0 = 0.01 * torch.randn(K, generator=torch.Generator().manual_seed(1))
    chunked, whole = _loss_and_grad_rows(rows, target, W0, b0, 1e-3), _loss_and_grad(full, target, W0, b0, 1e-3)
    for a, b in zip(chunked, whole):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)
    W, b = _fit_lbfgs(rows, target, K, 1.0, 500, 1e-6)
    W_full, b_full = _fit_lbfgs(full, target, K, 1.0, 500, 1e-6)
    loss = _loss_and_grad(full, target, W, b, 0.5 / N)[0].item()
    loss_full = _loss_and_grad(full, target, W_full, b_full, 0.5 / N)[0].item()
    assert loss == pytest.approx(loss_full, rel=1e-5)
    proba = torch.softmax(full @ W + b, dim=1).numpy()
    np.testing.assert_allclose(proba, torch.softmax(full @ W_full + b_full, dim=1).numpy(), atol=1e-3)


def test_reference_probe_batches_from_the_memory_map_are_the_same(bank, small_budget, monkeypatch):
    X, y, X_test, y_test, _ = bank
    streamed = linear_probe(X, y, X_test, y_test, protocol="reference", epochs=3, device="cpu")
    whole = one_chunk(monkeypatch, lambda: linear_probe(X, y, X_test, y_test, protocol="reference", epochs=3,
                                                        device="cpu"))
    assert (streamed.top1, streamed.top5) == (whole.top1, whole.top5)


def test_silhouette_stats_on_a_memory_map_match_arrays(bank, small_budget):
    X, y, _, _, other = bank
    on_map = silhouette_stats_multi(X, [y, other], device="cpu")
    in_memory = silhouette_stats_multi(np.array(X), [y, other], device="cpu")
    assert [(s.mean, s.std) for s in on_map] == [(s.mean, s.std) for s in in_memory]
