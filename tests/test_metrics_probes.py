"""Linear probe and kNN accuracy against scikit-learn on real features (digits)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from clusterprobe.errors import NonFiniteFeaturesError
from clusterprobe.errors import DeviceError
from clusterprobe.metrics import MetricsError, knn_accuracy, linear_probe


@pytest.fixture(scope="module")
def split():
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X.astype(np.float32), y, test_size=0.3, random_state=0, stratify=y)
    return Xtr, ytr, Xte, yte


def _top5(proba: np.ndarray, classes: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((classes[np.argsort(-proba, axis=1)[:, :5]] == y[:, None]).any(axis=1)))


# -- linear probe -----------------------------------------------------------------------------
@pytest.mark.parametrize("C", [1.0, 0.01])
def test_lbfgs_probe_matches_scikit_learn_logistic_regression(split, C):
    Xtr, ytr, Xte, yte = split
    ours = linear_probe(Xtr, ytr, Xte, yte, C=C)
    sk = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000, tol=1e-8)).fit(Xtr, ytr)
    assert abs(ours.top1 - sk.score(Xte, yte)) <= 0.005
    assert abs(ours.top5 - _top5(sk.predict_proba(Xte), sk.classes_, yte)) <= 0.005
    assert (ours.n_train, ours.n_test, ours.num_classes) == (len(ytr), len(yte), 10)
    assert ours.protocol == "lbfgs" and ours.evaluation == "train->test"


def test_lbfgs_probe_solves_the_same_problem_as_scikit_learn(split):
    """Not only the accuracy: the fitted weights agree (same objective, same optimum)."""
    import torch

    from clusterprobe.metrics._device import threads_for
    from clusterprobe.metrics.probes import _fit_lbfgs

    Xtr, ytr, _, _ = split
    Xs = StandardScaler().fit_transform(Xtr).astype(np.float32)
    with threads_for(0):  # a small problem: one thread, as linear_probe would run it
        W, b = _fit_lbfgs(torch.from_numpy(Xs), torch.from_numpy(ytr), 10, 0.05, 1000, 1e-6)
    sk = LogisticRegression(C=0.05, max_iter=5000, tol=1e-10).fit(Xs, ytr)
    np.testing.assert_allclose(W.numpy().T, sk.coef_, atol=2e-3)
    proba = torch.softmax(torch.from_numpy(Xs) @ W + b, dim=1).numpy()
    np.testing.assert_allclose(proba, sk.predict_proba(Xs), atol=2e-3)


def test_reference_protocol(split):
    Xtr, ytr, Xte, yte = split
    result = linear_probe(Xtr, ytr, Xte, yte, protocol="reference")
    sk = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(Xtr, ytr)
    assert result.protocol == "reference" and result.top5 is not None
    assert result.settings["epochs"] == 500 and result.settings["batch_size"] == 1000
    assert result.settings["lr"] == 1e-2 and result.settings["lr_final"] == 1e-6
    assert result.settings["weight_decay"] == 5e-6 and result.settings["standardize"] is False
    assert result.top1 >= sk.score(Xte, yte) - 0.03  # a different optimiser, the same kind of model
    assert linear_probe(Xtr, ytr, Xte, yte, protocol="reference").top1 == result.top1  # seeded


def test_reference_schedule_ends_at_the_final_learning_rate(split, monkeypatch):
    import torch

    seen = []
    original = torch.optim.lr_scheduler.ExponentialLR.step

    def step(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.append(self.optimizer.param_groups[0]["lr"])

    monkeypatch.setattr(torch.optim.lr_scheduler.ExponentialLR, "step", step)
    Xtr, ytr, Xte, yte = split
    linear_probe(Xtr, ytr, Xte, yte, protocol="reference", epochs=20)
    # the scheduler's first entry is the initial rate; one step between consecutive epochs
    assert len(seen) == 20 and seen[0] == 1e-2 and seen[-1] == pytest.approx(1e-6, rel=1e-6)
    assert all(a > b for a, b in zip(seen, seen[1:]))


def test_holdout_split_is_stratified_and_stated(split):
    Xtr, ytr, _, _ = split
    result = linear_probe(Xtr, ytr)
    assert result.evaluation == "holdout 20% stratified, seed 0"
    assert result.n_test == math.ceil(0.2 * len(ytr)) and result.n_train == len(ytr) - result.n_test
    assert result.top1 > 0.9
    other = linear_probe(Xtr, ytr, holdout=0.5, seed=3)
    assert other.evaluation == "holdout 50% stratified, seed 3"


def test_five_or_fewer_classes_have_no_top5(split):
    Xtr, ytr, Xte, yte = split
    keep_tr, keep_te = ytr < 5, yte < 5
    result = linear_probe(Xtr[keep_tr], ytr[keep_tr], Xte[keep_te], yte[keep_te])
    assert result.top5 is None and result.num_classes == 5


def test_unseen_test_classes_count_as_errors(split):
    Xtr, ytr, Xte, yte = split
    keep = ytr != 9
    result = linear_probe(Xtr[keep], ytr[keep], Xte, yte)
    # scikit-learn never predicts a class it has not seen either: the same accuracy, 9s all wrong
    sk = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, tol=1e-8)).fit(Xtr[keep], ytr[keep])
    assert abs(result.top1 - sk.score(Xte, yte)) <= 0.005
    assert result.top1 <= 1 - np.mean(yte == 9) + 1e-12
    knn = knn_accuracy(Xtr[keep], ytr[keep], Xte, yte, protocol="majority-euclidean")
    assert knn.top1 == pytest.approx(KNeighborsClassifier(5).fit(Xtr[keep], ytr[keep]).score(Xte, yte), abs=1e-12)


# -- kNN --------------------------------------------------------------------------------------------
def test_weighted_cosine_knn_matches_scikit_learn(split):
    Xtr, ytr, Xte, yte = split
    ours = knn_accuracy(Xtr, ytr, Xte, yte)
    sk = KNeighborsClassifier(20, metric="cosine", weights=lambda d: np.exp((1 - d) / 0.07)).fit(Xtr, ytr)
    assert ours.top1 == pytest.approx(sk.score(Xte, yte), abs=1e-12)
    assert ours.top5 == pytest.approx(_top5(sk.predict_proba(Xte), sk.classes_, yte), abs=1e-12)
    assert ours.settings == {"protocol": "weighted-cosine", "k": 20, "temperature": 0.07}


@pytest.mark.parametrize("k", [1, 5, 11])
def test_majority_euclidean_knn_matches_scikit_learn(split, k):
    Xtr, ytr, Xte, yte = split
    ours = knn_accuracy(Xtr, ytr, Xte, yte, protocol="majority-euclidean", k=k)
    sk = KNeighborsClassifier(k).fit(Xtr, ytr)
    assert ours.top1 == pytest.approx(sk.score(Xte, yte), abs=1e-12)


def test_knn_default_k_follows_the_protocol(split):
    Xtr, ytr, Xte, yte = split
    assert knn_accuracy(Xtr, ytr, Xte, yte, protocol="majority-euclidean").settings["k"] == 5
    assert knn_accuracy(Xtr, ytr).evaluation.startswith("holdout 20% stratified")


# -- bad input --------------------------------------------------------------------------------------
def test_probes_refuse_bad_input(split):
    Xtr, ytr, Xte, yte = split
    for probe in (linear_probe, knn_accuracy):
        with pytest.raises(MetricsError, match="64 dimensions but test features have 32"):
            probe(Xtr, ytr, Xte[:, :32], yte)
        with pytest.raises(MetricsError, match="single class"):
            probe(Xtr, np.zeros_like(ytr))
        with pytest.raises(MetricsError, match="both X_test and y_test"):
            probe(Xtr, ytr, Xte, None)
        with pytest.raises(MetricsError, match="missing"):
            probe(Xtr, None)
        bad = Xte.copy()
        bad[5:8] = np.inf
        with pytest.raises(NonFiniteFeaturesError, match="3 of 540 rows"):
            probe(Xtr, ytr, bad, yte)
    with pytest.raises(MetricsError, match="larger than the"):
        knn_accuracy(Xtr[:10], ytr[:10], Xte, yte, k=11)
    with pytest.raises(MetricsError, match="protocol"):
        linear_probe(Xtr, ytr, protocol="sgd")
    with pytest.raises(MetricsError, match="protocol"):
        knn_accuracy(Xtr, ytr, protocol="cosine")
    with pytest.raises(MetricsError, match="too few"):
        linear_probe(Xtr[:2], ytr[:2])


def test_options_are_keyword_only(split):
    Xtr, ytr, Xte, yte = split
    with pytest.raises(TypeError):
        linear_probe(Xtr, ytr, Xte, yte, "reference")
    with pytest.raises(TypeError):
        knn_accuracy(Xtr, ytr, Xte, yte, "majority-euclidean")


def test_probes_leave_the_global_random_state_alone(split):
    import torch

    Xtr, ytr, Xte, yte = split
    torch.manual_seed(1234)
    torch.rand(5)
    before = torch.get_rng_state()
    first = linear_probe(Xtr, ytr, Xte, yte, protocol="reference", epochs=5)
    linear_probe(Xtr, ytr, Xte, yte)
    linear_probe(Xtr, ytr)  # hold-out
    knn_accuracy(Xtr, ytr, Xte, yte)
    assert torch.equal(torch.get_rng_state(), before)
    # and the results do not depend on it: the seed alone decides
    torch.manual_seed(7)
    again = linear_probe(Xtr, ytr, Xte, yte, protocol="reference", epochs=5)
    assert (again.top1, again.top5) == (first.top1, first.top5)


def test_the_device_argument_decides_where_the_probe_runs(split, monkeypatch):
    """Without a GPU 'auto' and 'cpu' are the same device, so a comparison of their results shows
    nothing: make 'auto' resolve to another device (meta) and watch where the tensors go."""
    import torch

    from clusterprobe import devices
    from clusterprobe.metrics import _device, probes

    Xtr, ytr, Xte, yte = split
    asked, placed = [], []

    def resolve(device="auto"):
        asked.append(device)
        return torch.device("meta") if device == "auto" else devices.resolve_device(device)

    class Stop(Exception):
        pass

    def fit(X, *args):
        placed.append(X.device.type)
        raise Stop

    monkeypatch.setattr(probes, "resolve_device", resolve)
    monkeypatch.setattr(_device, "resolve_device", resolve)
    monkeypatch.setattr(probes, "_fit_lbfgs", fit)
    for device in ("auto", "cpu"):
        with pytest.raises(Stop):
            linear_probe(Xtr, ytr, Xte, yte, device=device)
    assert asked == ["auto", "cpu"] and placed == ["meta", "cpu"]
    # kNN hands the device to FAISS's GPU choice (meta is no GPU: FAISS stays on the CPU)
    asked.clear()
    ours = knn_accuracy(Xtr, ytr, Xte, yte, device="cpu")
    assert "cpu" in asked and "auto" not in asked
    sk = KNeighborsClassifier(20, metric="cosine", weights=lambda d: np.exp((1 - d) / 0.07)).fit(Xtr, ytr)
    assert ours.top1 == pytest.approx(sk.score(Xte, yte), abs=1e-12)


def test_device_names_are_checked(split):
    import torch

    Xtr, ytr, _, _ = split
    with pytest.raises(DeviceError, match="Unknown device"):
        linear_probe(Xtr, ytr, device="tpu")
    with pytest.raises(DeviceError, match="Unknown device"):
        knn_accuracy(Xtr, ytr, device="tpu")
    if not torch.cuda.is_available():
        for probe in (linear_probe, knn_accuracy):
            with pytest.raises(DeviceError, match="no CUDA GPU"):
                probe(Xtr, ytr, device="cuda")


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_results_equal_cpu_results(split):
    Xtr, ytr, Xte, yte = split
    for protocol in ("lbfgs", "reference"):
        cpu = linear_probe(Xtr, ytr, Xte, yte, protocol=protocol, device="cpu")
        gpu = linear_probe(Xtr, ytr, Xte, yte, protocol=protocol, device="cuda")
        assert abs(gpu.top1 - cpu.top1) <= 0.005 and abs(gpu.top5 - cpu.top5) <= 0.005, protocol
    for protocol in ("weighted-cosine", "majority-euclidean"):
        cpu = knn_accuracy(Xtr, ytr, Xte, yte, protocol=protocol, device="cpu")
        gpu = knn_accuracy(Xtr, ytr, Xte, yte, protocol=protocol, device="cuda")
        assert abs(gpu.top1 - cpu.top1) <= 0.005, protocol
