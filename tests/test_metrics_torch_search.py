"""The torch backend of k-means and exact search (the GPU path where FAISS has no GPU build),
checked on the CPU against FAISS itself and against exact probabilities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clusterprobe.metrics import kmeans, knn_accuracy, nmi
from clusterprobe.metrics import _torch_search
from clusterprobe.metrics._device import faiss_module, faiss_search, search_backend
from clusterprobe.metrics._stream import DeviceRows
from clusterprobe.metrics._validation import MetricsError
from clusterprobe.linalg import l2_normalize

CPU = torch.device("cpu")


def blobs(n=900, d=16, classes=6, spread=0.6, seed=0):
    rng = np.random.default_rng(seed)
    centers = 4 * rng.standard_normal((classes, d))
    y = rng.integers(0, classes, n)
    return (centers[y] + spread * rng.standard_normal((n, d))).astype(np.float32), y


@pytest.mark.parametrize("cosine", [True, False])
@pytest.mark.parametrize("budget", [None, "16K"])
def test_search_finds_faiss_neighbours(cosine, budget, monkeypatch):
    if budget:  # many database pieces and sub-blocks, merged as they come
        monkeypatch.setenv("CLUSTERPROBE_METRICS_MEMORY", budget)
    rng = np.random.default_rng(1)
    database = rng.standard_normal((700, 12)).astype(np.float32)
    queries = rng.standard_normal((90, 12)).astype(np.float32)
    scores, index = _torch_search.search(DeviceRows(database, None, CPU, normalize=cosine),
                                         DeviceRows(queries, None, CPU, normalize=cosine), 7, inner_product=cosine)
    prepare = l2_normalize if cosine else (lambda x: x)
    ref_scores, ref_index = faiss_search(prepare(database), prepare(queries), 7, cosine, device="cpu")
    np.testing.assert_array_equal(index, ref_index)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spherical", [True, False])
def test_lloyd_iterations_are_faiss_iterations(spherical):
    """From the same starting centroids, the same centroids and objective after each iteration."""
    X, y = blobs(spread=2.5)  # overlapping classes: centroids move for several iterations
    data = l2_normalize(X) if spherical else X
    # one point of each class: no cluster empties (FAISS's split of a large one draws from its own RNG)
    init = data[[int(np.flatnonzero(y == c)[0]) for c in range(6)]]
    faiss = faiss_module()
    for niter in (1, 6):
        km = faiss.Kmeans(X.shape[1], 6, niter=niter, spherical=spherical, seed=0, max_points_per_centroid=10**6,
                          min_points_per_centroid=1)
        km.train(data, init_centroids=init.copy())
        rows = DeviceRows(X, None, CPU, normalize=spherical)
        centroids, history = _torch_search.lloyd(rows, torch.from_numpy(init.copy()), niter, 0.0, spherical,
                                                 torch.Generator().manual_seed(0))
        np.testing.assert_allclose(centroids.numpy(), km.centroids, atol=2e-5)
        np.testing.assert_allclose(history, km.obj, rtol=1e-5)
        _, faiss_labels = km.index.search(data, 1)
        np.testing.assert_array_equal(_torch_search.assign(rows, centroids, spherical), faiss_labels[:, 0])


def test_an_empty_cluster_takes_half_of_a_large_one():
    X, _ = blobs(n=300, classes=3)
    init = np.concatenate([X[:2], np.full((1, X.shape[1]), 1e3, dtype=np.float32)])  # nobody near the third
    rows = DeviceRows(X, None, CPU)
    centroids, _ = _torch_search.lloyd(rows, torch.from_numpy(init), 1, 0.0, False, torch.Generator().manual_seed(0))
    centroids = centroids.numpy()
    assert np.isfinite(centroids).all() and float(np.abs(centroids).max()) < 100
    donor = int(np.argmin(np.abs(centroids[:2] - centroids[2]).sum(1)))
    # split apart by a relative 1/1024, alternating sign per dimension, as FAISS does
    np.testing.assert_allclose((centroids[2] - centroids[donor]) / (centroids[2] + centroids[donor]),
                               np.where(np.arange(X.shape[1]) % 2, -1, 1) / 1024, rtol=1e-3)


@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_kmeans_plus_plus_samples_proportionally_to_squared_distance(offset):
    """Second centroid on four points of a line: P(j) = mean over first picks i of d(i, j)^2 / sum_l d(i, l)^2.
    Also far from the origin, where |x|^2 - 2 x.c + |c|^2 in float32 would get the distances wrong."""
    points = np.array([[0.0], [1.0], [3.0], [10.0]], dtype=np.float32) + np.float32(offset)
    d2 = (points - points.T) ** 2
    expected = (d2 / d2.sum(1, keepdims=True)).mean(0)
    rows = DeviceRows(points, None, CPU)
    draws = 4000
    counts = np.zeros(4)
    for seed in range(draws):
        centroids = _torch_search.kmeans_plus_plus(rows, 2, torch.Generator().manual_seed(seed))
        counts[int(np.flatnonzero(points[:, 0] == float(centroids[1, 0]))[0])] += 1
    observed = counts / draws
    sigma = np.sqrt(expected * (1 - expected) / draws)
    assert np.all(np.abs(observed - expected) < 4 * sigma + 1e-9), (observed, expected)


def test_kmeans_plus_plus_never_picks_a_point_twice():
    """Chosen points (and their duplicates) have distance 0: with k distinct points every draw
    takes each once, also for duplicated rows far from the origin, read a chunk at a time."""
    rng = np.random.default_rng(0)
    distinct = (rng.standard_normal((5, 16)) + 100.0).astype(np.float32)
    X = np.repeat(distinct, 40, axis=0)[rng.permutation(200)]
    rows = _torch_search.Shards(X, [CPU, CPU], normalize=False)
    for seed in range(40):
        centroids = _torch_search.kmeans_plus_plus(rows, 5, torch.Generator().manual_seed(seed)).numpy()
        matches = (centroids[:, None, :] == distinct[None]).all(axis=2)
        assert matches.sum(axis=1).tolist() == [1] * 5 and matches.any(axis=0).all(), seed


@pytest.mark.parametrize("normalize", [True, False])
def test_torch_backend_kmeans_finds_what_faiss_finds(normalize, monkeypatch):
    X, y = blobs()
    a = kmeans(X, 6, seeds=4, normalize=normalize, device="cpu", backend="torch")
    b = kmeans(X, 6, seeds=4, normalize=normalize, device="cpu", backend="faiss")
    assert a.backend == "torch" and b.backend == "faiss"
    assert a.labels.shape == b.labels.shape == (4, len(X)) and a.centroids.shape == b.centroids.shape
    # k-means++ draws differ between the two, and any one seed may stop in a local optimum; the
    # best of four seeds of each reaches the true clustering, with the same objective
    best = lambda r: int(np.argmax(r.objective) if normalize else np.argmin(r.objective))  # noqa: E731
    assert nmi(y, a.labels[best(a)]) == pytest.approx(1.0) and nmi(y, b.labels[best(b)]) == pytest.approx(1.0)
    assert a.objective[best(a)] == pytest.approx(b.objective[best(b)], rel=1e-5)
    # seeded: the same result again, also when the rows are read a chunk at a time
    monkeypatch.setenv("CLUSTERPROBE_METRICS_MEMORY", "8K")
    again = kmeans(X.astype(np.float16), 6, seeds=2, normalize=normalize, device="cpu", backend="torch")
    f16 = X.astype(np.float16).astype(np.float32)
    ref = kmeans(f16, 6, seeds=2, normalize=normalize, device="cpu", backend="torch")
    np.testing.assert_array_equal(again.labels, ref.labels)
    random = kmeans(X, 6, seeds=1, init="random", device="cpu", backend="torch")
    assert random.labels.shape == (1, len(X))


def test_knn_with_the_torch_backend_equals_faiss(monkeypatch):
    X, y = blobs(n=1200, d=4, spread=4.0)  # overlapping classes: accuracy well below 1
    train, test = slice(0, 1000), slice(1000, None)
    expected = {p: knn_accuracy(X[train], y[train], X[test], y[test], protocol=p, device="cpu")
                for p in ("weighted-cosine", "majority-euclidean")}
    monkeypatch.setenv("CLUSTERPROBE_SEARCH_BACKEND", "torch")
    monkeypatch.setenv("CLUSTERPROBE_METRICS_MEMORY", "32K")
    for protocol, result in expected.items():
        assert 0.3 < result.top1 < 0.99
        assert knn_accuracy(X[train], y[train], X[test], y[test], protocol=protocol, device="cpu") == result


def test_backend_choice(monkeypatch):
    assert search_backend("cpu") == "faiss"
    assert search_backend("cpu", "torch") == "torch"
    monkeypatch.setenv("CLUSTERPROBE_SEARCH_BACKEND", "torch")
    assert search_backend("cpu") == "torch" and search_backend("cpu", "faiss") == "faiss"
    monkeypatch.setenv("CLUSTERPROBE_SEARCH_BACKEND", "cuml")
    with pytest.raises(MetricsError, match="Unknown k-means/search backend 'cuml'.*CLUSTERPROBE_SEARCH_BACKEND"):
        search_backend("cpu")
    with pytest.raises(MetricsError, match="'annoy'"):
        kmeans(blobs()[0], 3, backend="annoy")
    if not torch.cuda.is_available():
        assert math.isfinite(0.0)  # nothing more to check without a GPU


def test_the_suite_names_the_backend_that_clustered(monkeypatch):
    from clusterprobe.metrics import evaluate_arrays

    X, y = blobs()
    rows = {}
    for backend in ("faiss", "torch"):
        monkeypatch.setenv("CLUSTERPROBE_SEARCH_BACKEND", backend)
        frame = evaluate_arrays({"H": X}, y, metrics=["nmi", "knn"], device="cpu")
        rows[backend] = frame.set_index("metric")
        assert rows[backend].loc["nmi", "protocol"].startswith(f"{backend} k-means (k-means++")
    assert rows["torch"].loc["knn_top1", "value"] == rows["faiss"].loc["knn_top1", "value"]
    direct = kmeans(X, 6, seeds=3, device="cpu", backend="torch")  # the suite's defaults
    assert rows["torch"].loc["nmi", "value"] == pytest.approx(np.mean([nmi(y, labels) for labels in direct.labels]))


def test_rows_shared_among_devices_give_the_one_device_results(monkeypatch):
    """Several GPUs in one process: each holds a share of the rows and partial sums are added on the
    first. Three CPU 'devices' stand in for them here."""
    X, y = blobs(n=700, spread=2.5)
    three = [CPU, CPU, CPU]
    shards = _torch_search.Shards(X, three, normalize=True)
    assert [offset for offset, _ in shards.parts] == [0, 233, 467]
    index = torch.tensor([699, 0, 250, 466, 467])
    np.testing.assert_array_equal(shards.take(index).numpy(), l2_normalize(X)[index.numpy()])
    one = DeviceRows(X, None, CPU, normalize=True)
    a = _torch_search.kmeans_once(shards, 6, 3, 8, 0.0, True)
    b = _torch_search.kmeans_once(one, 6, 3, 8, 0.0, True)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], atol=1e-6)
    assert a[2] == pytest.approx(b[2], rel=1e-9)
    monkeypatch.setenv("CLUSTERPROBE_METRICS_MEMORY", "16K")  # several pieces per share too
    database = _torch_search.Shards(X[:600], three, normalize=False)
    queries = DeviceRows(X[600:], None, CPU)
    scores, found = _torch_search.search(database, queries, 5, inner_product=False)
    ref_scores, ref_found = faiss_search(X[:600], X[600:], 5, False, device="cpu")
    np.testing.assert_array_equal(found, ref_found)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-3)
    # one process on a machine with several GPUs uses them all; cuda:N or a torchrun rank one
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert _torch_search.devices_for(torch.device("cuda", 0)) == [torch.device("cuda", i) for i in range(4)]
    assert _torch_search.devices_for(torch.device("cuda", 2)) == [torch.device("cuda", 2)]
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _torch_search.devices_for(torch.device("cuda", 0)) == [torch.device("cuda", 0)]
    assert _torch_search.devices_for(CPU) == [CPU]


@pytest.mark.parametrize("sampled", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
def test_faiss_gpu_k_means_is_seeded_on_the_gpu_like_the_torch_backend(normalize, sampled, monkeypatch):
    """With FAISS's GPU build, k-means++ seeds are drawn by the torch backend on the GPU (FAISS
    seeds on one CPU thread: minutes per seed at ImageNet scale), then FAISS runs Lloyd from
    them: the same clustering as the torch backend, seed for seed, also when the seeds come from a
    sample of the rows (``sampled``: 224 of 900 here, as 262,144 of ImageNet's 1,281,167). Here the
    GPU is the CPU and FAISS's GPU flag is left off (this FAISS has no GPU)."""
    from clusterprobe.metrics import clustering

    if sampled:
        monkeypatch.setattr(_torch_search, "SEED_MIN_POINTS", 0)
        monkeypatch.setattr(_torch_search, "SEED_POINTS_PER_CENTROID", 32)
        assert _torch_search.seeding_sample_size(900, 7) == 224
    X, _ = blobs(n=900, d=8, spread=1.5)
    asked = []
    with monkeypatch.context() as m:
        m.setattr(clustering, "faiss_use_gpu", lambda device: True)
        m.setattr(clustering, "_gpu_for_seeding", lambda device: asked.append(device) or CPU)
        real_once = clustering._kmeans_once
        m.setattr(clustering, "_kmeans_once", lambda *a, **kw: real_once(*a, **{**kw, "gpu": False}))
        seeded = kmeans(X, 7, seeds=[3, 11], normalize=normalize, niter=6, tol=0.0, device="cuda", backend="faiss")
    assert asked == ["cuda"]
    torch_result = kmeans(X, 7, seeds=[3, 11], normalize=normalize, niter=6, tol=0.0, device="cpu", backend="torch")
    np.testing.assert_array_equal(seeded.labels, torch_result.labels)
    np.testing.assert_allclose(seeded.centroids, torch_result.centroids, atol=1e-5)
    np.testing.assert_allclose(seeded.objective, torch_result.objective, rtol=1e-5)
    # without the GPU flag FAISS seeds itself: other draws
    plain = kmeans(X, 7, seeds=[3, 11], normalize=normalize, niter=6, tol=0.0, device="cpu", backend="faiss")
    assert not np.array_equal(plain.centroids, seeded.centroids)


# -- k-means++ on a sample: bounded seeding when the rows are not resident --------------------------
class HostBank:
    """A memory-mapped bank's stand-in: float32 rows on the host that count every row read from them
    (slices, gathers and whole-array copies, all the ways DeviceRows and RowSubset read)."""

    def __init__(self, X: np.ndarray):
        self.X, self.rows_read = X, 0

    shape = property(lambda self: self.X.shape)
    dtype = property(lambda self: self.X.dtype)
    ndim = 2

    def __len__(self):
        return len(self.X)

    def __getitem__(self, key):
        out = self.X[key]
        self.rows_read += out.shape[0]
        return out

    def __array__(self, dtype=None, copy=None):
        self.rows_read += len(self.X)
        return self.X if dtype is None else self.X.astype(dtype)


def separated(n=20000, d=16, classes=10, seed=0):
    """Blobs far apart on orthogonal directions (unequal sizes, the smallest 1/55 of the rows): every
    k-means++ draw puts one seed in each blob, so k-means recovers the classes exactly."""
    rng = np.random.default_rng(seed)
    centers = 10 * np.linalg.qr(rng.standard_normal((d, classes)))[0].T
    y = rng.choice(classes, n, p=np.arange(1, classes + 1) / (classes * (classes + 1) / 2))
    return (centers[y] + 0.02 * rng.standard_normal((n, d))).astype(np.float32), y


def test_the_seeding_sample_is_a_rule_of_n_and_k():
    size = _torch_search.seeding_sample_size
    assert size(1_281_167, 1000) == 262_144  # ImageNet train at k = 1000: 2 GiB at d = 2048
    assert size(1_281_167, 2000) == 512_000  # 256 points per centroid beyond 2**18
    assert size(1_281_167, 5005) == 1_281_167  # more than n: every row
    assert size(50_000, 10) == size(50_000, 1000) == 50_000  # CIFAR, ImageNet val: every row, as before
    assert size(262_144, 10) == 262_144 and size(262_145, 10) == 262_144


def test_non_resident_seeding_reads_the_bank_once_not_once_per_centroid(monkeypatch):
    """k-means++ used to make one pass over the rows per centroid, read from the host when they are
    not resident (ImageNet, k = 1000: a thousand passes over 10.5 GB). It now reads its sample of
    the rows once; the Lloyd iterations and the assignment still read every row."""
    monkeypatch.setattr(_torch_search, "SEED_MIN_POINTS", 1024)
    monkeypatch.setenv("CLUSTERPROBE_METRICS_MEMORY", "256K")  # the bank (1.25 MiB) is not resident, the sample is
    X, _ = separated()
    n, k = len(X), 8
    m = _torch_search.seeding_sample_size(n, k)
    assert m == 2048
    bank = HostBank(X)
    rows = DeviceRows(bank, None, CPU, normalize=True)
    assert rows.resident is None and bank.rows_read == 0
    seeds = _torch_search.kmeans_plus_plus(rows, k, torch.Generator().manual_seed(0))
    assert bank.rows_read == m  # the sample, once (the old seeding: (k - 1) n + k = 140,008 rows)
    bank.rows_read = 0
    _torch_search.kmeans_plus_plus(rows, k, torch.Generator().manual_seed(0), sample=n)  # every row, as before
    assert bank.rows_read == (k - 1) * n + k
    # the seeds are rows of the seed's own uniform sample
    index = _torch_search.seeding_sample(n, m, torch.Generator().manual_seed(0))
    assert len(np.unique(index)) == m and np.all(np.diff(index) > 0) and index.max() < n
    np.testing.assert_array_equal((seeds.numpy()[:, None, :] == l2_normalize(X[index])[None]).all(2).sum(1), 1)
    # Lloyd and the assignment: every row at each pass, from those seeds
    bank.rows_read = 0
    _torch_search.kmeans_once(rows, k, 0, 2, 0.0, True)
    assert bank.rows_read == m + 2 * n + n
    # a sample too large for the working memory is read a chunk at a time: still m rows a pass
    monkeypatch.setenv("CLUSTERPROBE_METRICS_MEMORY", "64K")
    rows = DeviceRows(bank, None, CPU, normalize=True)
    bank.rows_read = 0
    streamed = _torch_search.kmeans_plus_plus(rows, k, torch.Generator().manual_seed(0))
    assert bank.rows_read == (k - 1) * (m + 1) + 1  # k - 1 passes over the sample, k single rows
    np.testing.assert_array_equal(streamed.numpy(), seeds.numpy())


def test_sampled_seeds_depend_on_the_seed_not_on_where_the_rows_are(monkeypatch):
    """The same seed gives the same centroids from resident rows, from rows read a chunk at a time, from
    rows shared among devices, and from FAISS's GPU seeding (which sends only the sample to the GPU)."""
    from clusterprobe.metrics import clustering

    monkeypatch.setattr(_torch_search, "SEED_MIN_POINTS", 0)
    X, _ = separated(n=6000, d=16, classes=6)
    k = 6
    assert _torch_search.seeding_sample_size(len(X), k) == 1536

    def seeds(rows, seed):
        return _torch_search.kmeans_plus_plus(rows, k, torch.Generator().manual_seed(seed)).numpy()

    resident = DeviceRows(X, None, CPU, normalize=True)
    assert resident.resident is not None
    reference = seeds(resident, 5)
    np.testing.assert_array_equal(seeds(resident, 5), reference)  # deterministic
    assert not np.array_equal(seeds(resident, 6), reference)  # another seed, another sample and draws
    exact = _torch_search.kmeans_plus_plus(resident, k, torch.Generator().manual_seed(5), sample=len(X)).numpy()
    assert not np.array_equal(exact, reference)  # the sample is drawn first
    np.testing.assert_array_equal(seeds(_torch_search.Shards(X, [CPU, CPU, CPU], normalize=True), 5), reference)
    bank = HostBank(l2_normalize(X))
    faiss_gpu = clustering._torch_seeds(bank, k, (5, 6), CPU)  # as FAISS's GPU build is seeded
    assert bank.rows_read == 2 * 1536  # one sample per seed; the whole bank never goes to the device
    np.testing.assert_array_equal(faiss_gpu[0], reference)
    np.testing.assert_array_equal(faiss_gpu[1], seeds(resident, 6))
    monkeypatch.setenv("CLUSTERPROBE_METRICS_MEMORY", "16K")  # neither the rows nor the sample resident
    streamed = DeviceRows(X, None, CPU, normalize=True)
    assert streamed.resident is None
    np.testing.assert_array_equal(seeds(streamed, 5), reference)


@pytest.mark.parametrize("normalize", [True, False])
def test_sampled_seeding_finds_the_clusters_exact_seeding_finds(normalize, monkeypatch):
    """Unequal, well-separated blobs (the smallest has 355 of 20,000 rows): k-means seeded from a
    2,560-row sample recovers the classes for every seed, as seeding from every row does, and
    reaches the same objective."""
    X, y = separated()
    exact = kmeans(X, 10, seeds=4, normalize=normalize, device="cpu", backend="torch")
    monkeypatch.setattr(_torch_search, "SEED_MIN_POINTS", 0)
    assert _torch_search.seeding_sample_size(len(X), 10) == 2560
    sampled = kmeans(X, 10, seeds=4, normalize=normalize, device="cpu", backend="torch")
    assert not np.array_equal(sampled.centroids, exact.centroids)  # other seeds were drawn
    for result in (exact, sampled):
        assert min(nmi(y, labels) for labels in result.labels) >= 0.99
    # the same optimum, to float32 rounding of the expanded distances (Euclidean: |x|^2 ~ 100, sum ~ 128)
    np.testing.assert_allclose(sampled.objective, exact.objective, rtol=1e-5)


def test_the_protocol_says_when_the_seeds_came_from_a_sample():
    """Rows of a k-means seeded on a sample (torch backend or FAISS's GPU build, > 2**18 rows) say so."""
    import numpy as np

    from clusterprobe.metrics import MetricSettings
    from clusterprobe.metrics.clustering import KMeansResult
    from clusterprobe.metrics.engine import _kmeans_columns

    def result(n, backend, gpu):
        return KMeansResult(labels=np.zeros((1, n), dtype=np.int64), centroids=np.zeros((1, 10, 2), np.float32),
                            objective=np.zeros(1), seeds=(0,), k=10, normalize=True, niter=100, tol=1e-4,
                            init="k-means++", gpu=gpu, backend=backend)

    s = MetricSettings()
    sampled = _kmeans_columns(s, 10, "torch", result(300_000, "torch", False))["protocol"]
    assert "seeds from 262,144 of 300,000 rows" in sampled
    assert "seeds from" in _kmeans_columns(s, 10, "faiss", result(300_000, "faiss", True))["protocol"]
    assert "seeds from" not in _kmeans_columns(s, 10, "faiss", result(300_000, "faiss", False))["protocol"]  # FAISS CPU
    assert "seeds from" not in _kmeans_columns(s, 10, "torch", result(200_000, "torch", False))["protocol"]
