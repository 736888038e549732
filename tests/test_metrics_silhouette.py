"""Exact silhouettes (cosine in O(nkd), Euclidean chunked) against scikit-learn to 1e-5."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.metrics import silhouette_samples as sk_samples
from sklearn.metrics import silhouette_score as sk_score

from clusterprobe.errors import NonFiniteFeaturesError
from clusterprobe.metrics import (
    MetricsError,
    silhouette_samples,
    silhouette_samples_multi,
    silhouette_score,
    silhouette_stats,
    silhouette_stats_multi,
)

TOL = 1e-5


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def label_sets(digits):
    X, y = digits
    rng = np.random.default_rng(0)
    return {
        "ground truth": y,
        "k-means": KMeans(10, n_init=1, random_state=0).fit(X).labels_,
        "random": rng.integers(0, 7, len(y)),
    }


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("which", ["ground truth", "k-means", "random"])
def test_matches_scikit_learn_per_sample(digits, label_sets, metric, which):
    X, _ = digits
    labels = label_sets[which]
    ours = silhouette_samples(X, labels, metric=metric)
    theirs = sk_samples(X.astype(np.float64), labels, metric=metric)
    assert ours.shape == (len(X),) and ours.dtype == np.float64
    assert np.abs(ours - theirs).max() < TOL
    stats = silhouette_stats(X, labels, metric=metric)
    assert stats.mean == pytest.approx(theirs.mean(), abs=TOL) and stats.std == pytest.approx(theirs.std(), abs=TOL)
    assert stats.n == len(X) and not stats.sampled


def test_euclidean_blocks_of_any_size_give_the_same_answer(digits, label_sets):
    X, y = digits
    reference = sk_samples(X.astype(np.float64), y)
    for block in (450, 1000, 1797, 4096):  # ragged last block, one block, bigger than n
        ours = silhouette_samples(X, y, metric="euclidean", block_size=block)
        assert np.abs(ours - reference).max() < TOL, block


def test_euclidean_is_exact_far_from_the_origin(digits):
    # float32 Gram-matrix distances lose precision when |x| >> distances; centring fixes that
    X, y = digits
    shifted = X + 1000.0
    reference = sk_samples(X.astype(np.float64), y)
    assert np.abs(silhouette_samples(shifted, y, metric="euclidean") - reference).max() < TOL


def test_several_labellings_share_one_pass(digits, label_sets):
    X, _ = digits
    labels = list(label_sets.values())
    for metric in ("cosine", "euclidean"):
        together = silhouette_samples_multi(X, labels, metric=metric)
        for one, values in zip(labels, together):
            # float32 products summed in another order: equal to well within the 1e-5 target
            np.testing.assert_allclose(values, silhouette_samples(X, one, metric=metric), atol=2e-6)
        stats = silhouette_stats_multi(X, labels, metric=metric)
        assert [s.mean for s in stats] == pytest.approx([v.mean() for v in together])


def test_edge_cases_follow_scikit_learn():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 5)).astype(np.float32)
    X[3] = 0.0  # a zero row: cosine distance 1 to everything, as in scikit-learn
    labels = np.array([-5] * 15 + [2] * 15 + [40] * 9 + [7])  # arbitrary values, a singleton
    for metric in ("cosine", "euclidean"):
        ours = silhouette_samples(X, labels, metric=metric)
        theirs = sk_samples(X, labels, metric=metric)
        assert np.abs(ours - theirs).max() < TOL
        assert ours[-1] == 0.0  # alone in its cluster
    # integer, float64 and float-valued label inputs are all accepted
    assert silhouette_score(X.astype(np.float64), labels.astype(float)) == pytest.approx(sk_score(X, labels, metric="cosine"), abs=TOL)


def test_sampling_is_optional_and_reported(digits):
    X, y = digits
    exact = silhouette_stats(X, y)
    sampled = silhouette_stats(X, y, sample_size=600, random_state=3)
    assert sampled.sampled and sampled.n == 600 and not exact.sampled
    assert sampled.mean == pytest.approx(exact.mean, abs=0.05)
    assert silhouette_stats(X, y, sample_size=600, random_state=3) == sampled  # reproducible
    assert silhouette_stats(X, y, sample_size=10**6) == exact  # larger than n: exact
    # the subset: sample_size rows drawn without replacement with numpy's generator, distances
    # within the subset; scikit-learn on those rows gives the same numbers
    idx = np.sort(np.random.default_rng(3).choice(len(X), size=600, replace=False))
    reference = sk_samples(X[idx].astype(np.float64), y[idx], metric="cosine")
    assert (sampled.mean, sampled.std) == pytest.approx((reference.mean(), reference.std()), abs=TOL)
    with pytest.raises(MetricsError, match="sample_size"):
        silhouette_stats(X, y, sample_size=1)


def test_bad_input_is_refused(digits):
    X, y = digits
    with pytest.raises(TypeError):
        silhouette_samples(X, y, "euclidean")  # options are keyword-only
    with pytest.raises(TypeError):
        silhouette_score(X, y, "euclidean")
    with pytest.raises(MetricsError, match="at least one labelling"):
        silhouette_samples_multi(X, [])
    with pytest.raises(MetricsError, match="entries but there are"):
        silhouette_stats_multi(X, [y, y[:-1]], sample_size=100)
    with pytest.raises(MetricsError, match="between 2 and n - 1"):
        silhouette_samples(X, np.zeros(len(X), dtype=int))
    with pytest.raises(MetricsError, match="own cluster"):
        silhouette_samples(X[:10], np.arange(10))
    with pytest.raises(MetricsError, match="'cosine' or 'euclidean'"):
        silhouette_samples(X, y, metric="manhattan")
    with pytest.raises(MetricsError, match="entries but there are"):
        silhouette_samples(X, y[:-1])
    with pytest.raises(MetricsError, match="integers"):
        silhouette_samples(X, np.array(["a"] * len(X)))
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(NonFiniteFeaturesError, match="1 of 1797 rows"):
        silhouette_samples(bad, y)
