"""k-means (FAISS, all points), NMI/ARI/Hungarian accuracy and the label-free extras, against
scikit-learn and hand computations on real features (scikit-learn's digits)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    normalized_mutual_info_score,
)
from sklearn.preprocessing import normalize

from clusterprobe.errors import NonFiniteFeaturesError
from clusterprobe.metrics import (
    MetricsError,
    ari,
    calinski_harabasz,
    cluster_agreement,
    cluster_validity,
    cluster_acc,
    davies_bouldin,
    kmeans,
    nmi,
    rankme,
    singular_values,
)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X.astype(np.float32), y


# -- k-means -------------------------------------------------------------------------------------
def test_kmeans_returns_one_clustering_per_seed(digits):
    X, y = digits
    result = kmeans(X, 10, seeds=3)
    assert result.labels.shape == (3, len(X)) and result.labels.dtype == np.int64
    assert result.centroids.shape == (3, 10, 64)
    assert result.seeds == (0, 1, 2) and result.k == 10 and result.normalize
    assert all(np.unique(labels).size == 10 for labels in result.labels)
    assert not np.array_equal(result.labels[0], result.labels[1])  # seeds differ
    again = kmeans(X, 10, seeds=[0, 1, 2])
    np.testing.assert_array_equal(result.labels, again.labels)  # and are reproducible
    # spherical: centroids on the unit sphere
    np.testing.assert_allclose(np.linalg.norm(result.centroids, axis=2), 1.0, atol=1e-5)


@pytest.mark.parametrize("normalize_features", [True, False])
def test_kmeans_quality_matches_scikit_learn_within_seed_noise(digits, normalize_features):
    X, y = digits
    ours = cluster_agreement(y, kmeans(X, 10, seeds=5, normalize=normalize_features))["nmi"]
    data = normalize(X) if normalize_features else X
    theirs = [normalized_mutual_info_score(y, KMeans(10, n_init=1, random_state=s).fit(data).labels_) for s in range(5)]
    noise = max(ours[1], np.std(theirs), 0.01)
    assert abs(ours[0] - np.mean(theirs)) < 4 * noise, (ours, np.mean(theirs), noise)


def test_kmeans_trains_on_every_point_not_a_subsample():
    # FAISS by default trains on 256 points per centroid; with all points, the converged
    # centroids are exactly the means of their clusters over the whole data set.
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((4, 16)) * 8
    X = (centers[rng.integers(0, 4, 20000)] + rng.standard_normal((20000, 16))).astype(np.float32)
    result = kmeans(X, 4, seeds=1, normalize=False, tol=0.0)
    for j in range(4):
        members = X[result.labels[0] == j]
        np.testing.assert_allclose(result.centroids[0, j], members.mean(axis=0), atol=1e-4)


def test_kmeans_seeded_from_a_sample_clusters_as_well_as_seeded_from_every_row(digits, monkeypatch):
    """The torch backend (and FAISS's GPU build) draw k-means++ seeds from a sample above 2**18 rows;
    forced here on digits, 320 of 1,797 rows (32 per centroid, 8x sparser than the rule's 256),
    the Lloyd iterations on every row reach the same quality within seed noise (NMI ~0.69-0.71 and
    the spherical objective within 0.5 % over 8 seeds)."""
    from clusterprobe.metrics import _torch_search

    X, y = digits
    exact = kmeans(X, 10, seeds=8, device="cpu", backend="torch")
    monkeypatch.setattr(_torch_search, "SEED_MIN_POINTS", 0)
    monkeypatch.setattr(_torch_search, "SEED_POINTS_PER_CENTROID", 32)
    sampled = kmeans(X, 10, seeds=8, device="cpu", backend="torch")
    assert not np.array_equal(sampled.labels, exact.labels)
    ours, theirs = cluster_agreement(y, sampled)["nmi"], cluster_agreement(y, exact)["nmi"]
    noise = max(ours[1], theirs[1], 0.01)
    assert abs(ours[0] - theirs[0]) < 4 * noise and ours[0] > 0.6, (ours, theirs)
    assert sampled.objective.mean() == pytest.approx(exact.objective.mean(), rel=5e-3)


def _faiss_once(X, k, niter):
    """One plain FAISS k-means call of ``niter`` iterations, options as :func:`kmeans` sets them."""
    import math

    from clusterprobe.linalg import l2_normalize
    from clusterprobe.metrics._device import faiss_module

    faiss = faiss_module()
    km = faiss.Kmeans(X.shape[1], k, niter=niter, nredo=1, seed=0, spherical=True, verbose=False,
                      max_points_per_centroid=math.ceil(len(X) / k) + 1, min_points_per_centroid=1,
                      init_method=faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS)
    km.train(l2_normalize(X))
    return km.obj[-1]


def test_kmeans_stops_early_only_when_converged(digits):
    X, _ = digits
    # tol=0 never stops early: the chunked run equals one FAISS call of all 100 iterations
    exact = kmeans(X, 10, seeds=1, tol=0.0, niter=100)
    assert exact.objective[0] == pytest.approx(_faiss_once(X, 10, 100), rel=1e-6)
    # a loose tolerance stops after the first chunk of 5 iterations (there the objective, a sum
    # of cosine similarities, changes by < 1 %), so it ends below the converged objective
    loose = kmeans(X, 10, seeds=1, tol=1e-2)
    assert loose.objective[0] == pytest.approx(_faiss_once(X, 10, 5), rel=1e-6)
    assert loose.objective[0] < exact.objective[0] - 1.0


def test_kmeans_rejects_bad_input(digits):
    X, _ = digits
    with pytest.raises(TypeError):
        kmeans(X, 10, 3)  # options are keyword-only
    with pytest.raises(MetricsError, match="init"):
        kmeans(X, 10, init="kmeans||")
    with pytest.raises(MetricsError, match="niter"):
        kmeans(X, 10, niter=0)
    with pytest.raises(MetricsError, match="larger than the number of samples"):
        kmeans(X[:5], 6)
    with pytest.raises(MetricsError, match="k >= 2"):
        kmeans(X, 1)
    with pytest.raises(MetricsError, match="integer"):
        kmeans(X, 2.5)
    with pytest.raises(MetricsError, match="at least one"):
        kmeans(X, 3, seeds=[])
    with pytest.raises(MetricsError, match="2-D"):
        kmeans(X[0], 3)
    bad = X.copy()
    bad[[3, 7], 0] = np.nan
    bad[9, 5] = np.inf
    with pytest.raises(NonFiniteFeaturesError, match="3 of 1797 rows"):
        kmeans(bad, 10)


def test_features_whose_squared_distances_overflow_are_refused(digits):
    """Finite but huge features (a diverged checkpoint): FAISS's float32 squared distances
    overflow, which gave a wrong majority-Euclidean kNN accuracy (0.34 instead of ~0.97) and an
    uncaught C++ error that ended the process in raw k-means. Refused, naming the magnitude."""
    from clusterprobe.metrics import knn_accuracy

    X, y = digits
    huge = X * np.float32(1e18)  # digits' pixels go up to 16: values up to 1.6e19
    with pytest.raises(MetricsError, match="up to 1.6e\\+19 in magnitude.*overflow float32"):
        knn_accuracy(huge[:1500], y[:1500], huge[1500:], y[1500:], protocol="majority-euclidean")
    with pytest.raises(MetricsError, match="overflow float32"):
        kmeans(huge, 10, normalize=False)
    large = X * np.float32(1e15)  # below the limit for 64 dimensions (5.8e17): measured as usual
    expected = knn_accuracy(X[:1500], y[:1500], X[1500:], y[1500:], protocol="majority-euclidean").top1
    got = knn_accuracy(large[:1500], y[:1500], large[1500:], y[1500:], protocol="majority-euclidean").top1
    assert expected > 0.9 and got == pytest.approx(expected, abs=0.01)


# -- agreement with ground truth ------------------------------------------------------------------
def test_nmi_and_ari_are_scikit_learns(digits):
    X, y = digits
    labels = kmeans(X, 10, seeds=1).labels[0]
    assert nmi(y, labels) == pytest.approx(normalized_mutual_info_score(y, labels))
    assert ari(y, labels) == pytest.approx(adjusted_rand_score(y, labels))
    result = kmeans(X, 10, seeds=2)
    scores = cluster_agreement(y, result)
    assert set(scores) == {"nmi", "ari", "cluster_acc"}
    for name, reference in (("nmi", normalized_mutual_info_score), ("ari", adjusted_rand_score)):
        values = [reference(y, labels) for labels in result.labels]  # one per seed
        assert scores[name] == pytest.approx((np.mean(values), np.std(values)))
    assert cluster_agreement(y, result, metrics=["ari"]) == {"ari": scores["ari"]}
    with pytest.raises(MetricsError, match="Unknown agreement metric 'acc'"):
        cluster_agreement(y, result, metrics=["acc"])


def test_cluster_acc_by_hand():
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([7, 7, 3, 3, 5, 3])  # best matching: 7->0, 3->1, 5->2: 5 of 6 right
    assert cluster_acc(y, pred) == pytest.approx(5 / 6)
    assert cluster_acc(y, np.array([1, 1, 2, 2, 0, 0])) == 1.0  # any relabelling
    # more clusters than classes: the extra cluster cannot be matched and counts as wrong
    assert cluster_acc(np.array([0, 0, 0, 1, 1, 1]), np.array([0, 0, 2, 1, 1, 1])) == pytest.approx(5 / 6)
    with pytest.raises(MetricsError, match="entries but there are"):
        cluster_acc(y, pred[:4])


def test_cluster_acc_matches_brute_force(digits):
    from itertools import permutations

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    pred = np.where(rng.random(200) < 0.6, (y + 1) % 4, rng.integers(0, 4, 200))
    best = max(np.mean(np.array(p)[pred] == y) for p in permutations(range(4)))
    assert cluster_acc(y, pred) == pytest.approx(best)


# -- label-free extras ------------------------------------------------------------------------------
def test_davies_bouldin_and_calinski_harabasz_match_scikit_learn(digits):
    X, y = digits
    assert davies_bouldin(X, y) == pytest.approx(davies_bouldin_score(X, y))
    assert calinski_harabasz(X, y) == pytest.approx(calinski_harabasz_score(X, y))
    result = kmeans(X, 10, seeds=2)
    scores = cluster_validity(X, result)
    Xn = normalize(X)  # computed on the features k-means saw
    db = [davies_bouldin_score(Xn, labels) for labels in result.labels]
    ch = [calinski_harabasz_score(Xn, labels) for labels in result.labels]
    assert scores["davies_bouldin"] == pytest.approx((np.mean(db), np.std(db)), rel=1e-4)
    assert scores["calinski_harabasz"] == pytest.approx((np.mean(ch), np.std(ch)), rel=1e-4)


def test_rankme_by_hand(digits):
    X, _ = digits
    sigma = np.linalg.svd(X.astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(singular_values(X), sigma, rtol=1e-6, atol=1e-6 * sigma[0])
    p = sigma / sigma.sum() + 1e-7
    assert rankme(X) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-6)
    # a rank-3 matrix has effective rank <= 3; wide matrices (d > n) work too
    rng = np.random.default_rng(0)
    low = rng.standard_normal((500, 3)) @ rng.standard_normal((3, 40))
    assert 1.0 < rankme(low) <= 3.0 + 1e-6
    assert 1.0 < rankme(rng.standard_normal((20, 100))) <= 20
    with pytest.raises(MetricsError, match="all-zero"):
        rankme(np.zeros((10, 4)))


# -- runtime --------------------------------------------------------------------------------------
def test_threads_for_restores_thread_counts():
    import torch

    from clusterprobe.metrics._device import faiss_module, threads_for

    faiss = faiss_module()
    original = (torch.get_num_threads(), faiss.omp_get_max_threads())
    # start from 2 threads: with 1 (e.g. OMP_NUM_THREADS=1) "restored" could not be told apart
    torch.set_num_threads(2)
    faiss.omp_set_num_threads(2)
    try:
        with threads_for(10):
            assert torch.get_num_threads() == 1 and faiss.omp_get_max_threads() == 1
        assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == (2, 2)
        with threads_for(1e12):  # large work keeps every thread
            assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == (2, 2)
    finally:
        torch.set_num_threads(original[0])
        faiss.omp_set_num_threads(original[1])


def test_kmeans_leaves_the_global_random_state_alone(digits):
    import torch

    X, _ = digits
    torch.manual_seed(99)
    before = torch.get_rng_state()
    kmeans(X, 10, seeds=2)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("first", ["faiss", "torch"])
def test_metrics_work_whichever_of_faiss_and_torch_is_imported_first(first):
    script = textwrap.dedent(f"""
        import {first}
        import numpy as np
        from sklearn.datasets import load_digits
        from clusterprobe.metrics import kmeans, linear_probe, knn_accuracy, silhouette_score
        X, y = load_digits(return_X_y=True)
        X, y = X[:600], y[:600]
        assert kmeans(X, 10, seeds=2).labels.shape == (2, len(X))
        assert linear_probe(X, y).top1 > 0.85 and knn_accuracy(X, y).top1 > 0.85
        assert -1 <= silhouette_score(X, y, metric="euclidean") <= 1
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
