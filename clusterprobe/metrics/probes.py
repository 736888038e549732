"""Accuracy probes on frozen features: linear classifier and k-nearest neighbours.

Linear probe protocols:

* ``'lbfgs'`` (default, fast): multinomial logistic regression trained full-batch with L-BFGS
  in torch on standardised features, with the objective of scikit-learn's
  ``LogisticRegression(C=C)`` (mean cross-entropy + ||W||^2 / (2 C n), bias not penalised),
  so both reach the same solution. A whitening reparametrisation of the weights (same
  problem, better conditioned) cuts the number of passes over the data about eightfold.
* ``'reference'``: the ReSA reference protocol: ``Linear(d, C)`` on raw features, Adam (weight
  decay 5e-6), learning rate 1e-2 decaying exponentially to 1e-6 over 500 epochs, batch 1000.

kNN protocols (exact search with FAISS, GPU when present):

* ``'weighted-cosine'`` (default): k = 20 neighbours by cosine similarity, each voting with
  weight exp(similarity / 0.07) (the DINO / solo-learn protocol).
* ``'majority-euclidean'``: the reference protocol, k = 5 neighbours by Euclidean distance on
  raw features, one vote each (ties go to the smallest class index, as in scikit-learn).

Both train on the train features and score on the test features; without test features they
use a stratified hold-out of the train features, and say so in the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..devices import resolve_device
from ._device import faiss_search, threads_for
from ..linalg import l2_normalize
from ._validation import (
    MetricsError,
    as_features,
    as_labels,
    check_same_dim,
    check_two_classes,
)

PROBE_PROTOCOLS = ("lbfgs", "reference")
KNN_PROTOCOLS = ("weighted-cosine", "majority-euclidean")
KNN_DEFAULT_K = {"weighted-cosine": 20, "majority-euclidean": 5}


@dataclass
class ProbeResult:
    """Accuracy of a probe, as fractions in [0, 1]; ``top5`` is None with 5 classes or fewer."""

    top1: float
    top5: float | None
    n_train: int
    n_test: int
    num_classes: int
    protocol: str
    evaluation: str
    settings: dict = field(default_factory=dict)


@dataclass
class Split:
    """Train and test arrays for a probe plus a description of where the test set came from."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    evaluation: str


def _holdout_split(X: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> Split:
    """Stratified hold-out of validated ``X`` (n, d), ``y`` (n,): ``fraction`` (0 < f < 1) of
    each class for testing, drawn with ``seed``.

    Falls back to an unstratified split (stated in ``evaluation``) when a class has a single
    sample.
    """
    from sklearn.model_selection import train_test_split

    n = len(y)
    n_test = int(math.ceil(fraction * n))
    classes, counts = np.unique(y, return_counts=True)
    if n_test < 1 or n - n_test < 2:
        raise MetricsError(
            f"A {fraction:.0%} hold-out of {n} samples leaves too few to train and test; pass "
            "separate test features or use more samples."
        )
    stratify = y if counts.min() >= 2 and n_test >= classes.size and n - n_test >= classes.size else None
    idx_train, idx_test = train_test_split(
        np.arange(n), test_size=n_test, random_state=seed, stratify=stratify, shuffle=True
    )
    kind = "stratified" if stratify is not None else "unstratified (a class has too few samples)"
    evaluation = f"holdout {fraction:.0%} {kind}, seed {seed}"
    return Split(X[idx_train], y[idx_train], X[idx_test], y[idx_test], evaluation)


def make_split(X_train, y_train, X_test=None, y_test=None, *, holdout: float = 0.2, seed: int = 0,
               what: str = "probe") -> Split:
    """Validate probe inputs and return the train/test split to use.

    ``X_train`` (n, d) with ``y_train`` (n,); ``X_test`` (m, d) with ``y_test`` (m,), or both
    None for a stratified hold-out (``holdout`` of each class, drawn with ``seed``) of the train
    set. ``what`` names the probe in error messages.
    """
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float, np.integer, np.floating)) \
            or not 0.0 < float(holdout) < 1.0:
        raise MetricsError(f"holdout fraction must be between 0 and 1; got {holdout!r}.")
    X_train = as_features(X_train, f"{what} train features")
    y_train = as_labels(y_train, n=X_train.shape[0], name=f"{what} train labels")
    check_two_classes(y_train, f"{what} train labels")
    if (X_test is None) != (y_test is None):
        raise MetricsError(f"{what}: pass both X_test and y_test, or neither (for a hold-out split).")
    if X_test is None:
        return _holdout_split(X_train, y_train, holdout, seed)
    X_test = as_features(X_test, f"{what} test features")
    y_test = as_labels(y_test, n=X_test.shape[0], name=f"{what} test labels")
    check_same_dim(X_train, X_test, what)
    return Split(X_train, y_train, X_test, y_test, "train->test")


def _split(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray | None, y_test: np.ndarray | None,
           holdout: float, seed: int) -> Split:
    """:func:`make_split` on validated arrays (test arrays both given or both None)."""
    if X_test is None:
        return _holdout_split(X_train, y_train, holdout, seed)
    return Split(X_train, y_train, X_test, y_test, "train->test")


def _encode_classes(y_train: np.ndarray, y_test: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map train classes to 0..C-1; test labels unseen in training become -1 (always wrong)."""
    classes, train_codes = np.unique(y_train, return_inverse=True)
    pos = np.clip(np.searchsorted(classes, y_test), 0, classes.size - 1)
    test_codes = np.where(classes[pos] == y_test, pos, -1)
    return classes, train_codes.astype(np.int64), test_codes.astype(np.int64)


def _topk_accuracy(scores: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Fraction of rows of ``scores`` (m, C) whose top-k columns contain ``targets`` (m,)."""
    if k == 1:
        return float(np.mean(scores.argmax(axis=1) == targets))
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float(np.mean((top == targets[:, None]).any(axis=1)))


def _accuracies(scores: np.ndarray, targets: np.ndarray) -> tuple[float, float | None]:
    C = scores.shape[1]
    return _topk_accuracy(scores, targets, 1), (_topk_accuracy(scores, targets, 5) if C > 5 else None)


# -- linear probe ---------------------------------------------------------------------------
def _loss_and_grad(X: torch.Tensor, y: torch.Tensor, W: torch.Tensor, b: torch.Tensor, penalty: float):
    """Mean cross-entropy of softmax(XW + b) plus ``penalty * ||W||^2``, and its gradients.

    Written out by hand rather than with autograd: the transposed product autograd uses for
    dL/dW (X^T G with a (n, d) X) is several times slower on CPU than (G^T X)^T.
    """
    n = X.shape[0]
    logits = torch.addmm(b, X, W)  # (n, C)
    lse = torch.logsumexp(logits, dim=1)
    picked = logits.gather(1, y[:, None]).squeeze(1)
    loss = (lse - picked).mean() + penalty * (W * W).sum()
    probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place
    probs[torch.arange(n, device=X.device), y] -= 1.0
    probs /= n
    grad_W = torch.mm(probs.T, X).T.contiguous() + (2.0 * penalty) * W
    grad_b = probs.sum(dim=0)
    return loss, grad_W, grad_b


def _preconditioner(X: torch.Tensor, rows: int = 20000, damping: float = 1e-2) -> torch.Tensor:
    """(Sigma + delta I)^(-1/2), Sigma the second-moment matrix of (a sample of) the rows of X.

    Multinomial logistic regression's Hessian is roughly Sigma (x) softmax curvature, so
    optimising V with W = M V makes it nearly isotropic: L-BFGS then needs ~25 evaluations
    instead of ~200 on correlated features, and still solves exactly the same problem.
    ``delta = damping * mean eigenvalue`` keeps near-constant directions harmless.
    """
    n, d = X.shape
    if n > rows:
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:rows].to(X.device)
        X = X[idx]
    sigma = (X.T @ X).double() / X.shape[0]
    evals, evecs = torch.linalg.eigh(sigma)
    evals = evals.clamp(min=0)
    delta = damping * float(evals.mean()) + 1e-12
    return ((evecs * (evals + delta).rsqrt()) @ evecs.T).to(X.dtype)


def _fit_lbfgs(X: torch.Tensor, y: torch.Tensor, C_classes: int, C: float, max_iter: int, tol: float):
    """Minimise mean CE(XW + b) + ||W||^2 / (2 C n) with full-batch L-BFGS; returns (W, b).

    L-BFGS runs on V with W = M V (M from :func:`_preconditioner`); ``tol`` bounds the largest
    gradient entry with respect to (V, b).
    """
    n, d = X.shape
    M = _preconditioner(X)
    V = torch.zeros((d, C_classes), dtype=X.dtype, device=X.device)
    b = torch.zeros(C_classes, dtype=X.dtype, device=X.device)
    penalty = 0.5 / (C * n)
    optimizer = torch.optim.LBFGS(
        [V, b],
        lr=1.0,
        max_iter=max_iter,
        max_eval=int(max_iter * 1.5),
        history_size=20,
        tolerance_grad=tol,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure():
        loss, grad_W, b.grad = _loss_and_grad(X, y, M @ V, b, penalty)
        V.grad = M @ grad_W  # M is symmetric: d loss / dV = M^T d loss / dW
        return loss

    optimizer.step(closure)
    return M @ V, b


def _fit_reference(
    X: torch.Tensor, y: torch.Tensor, C_classes: int, epochs: int, batch_size: int,
    lr: float, lr_final: float, weight_decay: float, seed: int,
):
    """The reference protocol: Linear + Adam, LR decaying exponentially from lr (first epoch) to
    lr_final (last epoch), shuffled mini-batches; seeded."""
    n, d = X.shape
    generator = torch.Generator().manual_seed(seed)
    # skip_init: the layer's own initialisation would draw from torch's global RNG
    layer = torch.nn.utils.skip_init(torch.nn.Linear, d, C_classes).to(X.device)
    with torch.no_grad():  # seeded initialisation (PyTorch's default scheme), local generator
        bound = 1.0 / math.sqrt(d)
        layer.weight.copy_(torch.empty(C_classes, d).uniform_(-bound, bound, generator=generator))
        layer.bias.copy_(torch.empty(C_classes).uniform_(-bound, bound, generator=generator))
    optimizer = torch.optim.Adam(layer.parameters(), lr=lr, weight_decay=weight_decay)
    # the first epoch runs at lr and the last at lr_final
    gamma = (lr_final / lr) ** (1.0 / max(epochs - 1, 1))
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)
    for epoch in range(epochs):
        if epoch:
            scheduler.step()
        order = torch.randperm(n, generator=generator).to(X.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            loss = torch.nn.functional.cross_entropy(layer(X[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return layer.weight.detach().T.contiguous(), layer.bias.detach()


def linear_probe(
    X_train,
    y_train,
    X_test=None,
    y_test=None,
    *,
    protocol: str = "lbfgs",
    C: float = 1.0,
    max_iter: int = 1000,
    tol: float = 1e-4,
    epochs: int = 500,
    batch_size: int = 1000,
    lr: float = 1e-2,
    lr_final: float = 1e-6,
    weight_decay: float = 5e-6,
    standardize: bool | None = None,
    holdout: float = 0.2,
    seed: int = 0,
    device: str = "auto",
) -> ProbeResult:
    """Train a linear classifier on ``X_train`` (n, d), ``y_train`` (n,) and report top-1/top-5
    accuracy on ``X_test`` (m, d), ``y_test`` (m,).

    ``protocol='lbfgs'`` solves scikit-learn's ``LogisticRegression(C=C)`` problem on
    standardised features (``max_iter``; ``tol`` = largest gradient entry at which to stop,
    scikit-learn's default 1e-4); ``'reference'`` runs the Adam protocol (``epochs``,
    ``batch_size``, ``lr`` -> ``lr_final``, ``weight_decay``; initialisation and shuffling drawn
    with ``seed``) on raw features. ``standardize`` overrides the protocol's choice. Without
    test arrays, a stratified ``holdout`` of the train set (drawn with ``seed``) is scored.
    torch's global random state is neither used nor changed.

    Raises:
        MetricsError: bad shapes, fewer than two classes, an unknown protocol, C <= 0.
        NonFiniteFeaturesError: NaN or infinite features.
        DeviceError: an unknown device, or a GPU that is not there.
    """
    if protocol not in PROBE_PROTOCOLS:
        raise MetricsError(f"Unknown linear probe protocol {protocol!r}: use {' or '.join(PROBE_PROTOCOLS)}.")
    if not (isinstance(C, (int, float)) and C > 0):
        raise MetricsError(f"C (inverse L2 strength) must be a positive number; got {C!r}.")
    dev = resolve_device(device)
    split = make_split(X_train, y_train, X_test, y_test, holdout=holdout, seed=seed, what="linear probe")
    return _linear_probe(split, protocol, C=C, max_iter=max_iter, tol=tol, epochs=epochs, batch_size=batch_size,
                         lr=lr, lr_final=lr_final, weight_decay=weight_decay, standardize=standardize, seed=seed,
                         device=dev)


def _linear_probe(split: Split, protocol: str, *, C: float = 1.0, max_iter: int = 1000, tol: float = 1e-4,
                  epochs: int = 500, batch_size: int = 1000, lr: float = 1e-2, lr_final: float = 1e-6,
                  weight_decay: float = 5e-6, standardize: bool | None = None, seed: int = 0,
                  device: torch.device) -> ProbeResult:
    """:func:`linear_probe` on a validated :class:`Split` and a resolved ``device``."""
    classes, ytr, yte = _encode_classes(split.y_train, split.y_test)
    standardize = (protocol == "lbfgs") if standardize is None else bool(standardize)
    Xtr, Xte = _as_tensors(split, standardize, device)
    target = torch.from_numpy(ytr).to(device)
    if protocol == "lbfgs":
        settings = {"protocol": protocol, "C": float(C), "max_iter": int(max_iter), "tol": float(tol)}
        work = Xtr.shape[0] * Xtr.shape[1] * classes.size
    else:
        settings = {"protocol": protocol, "epochs": int(epochs), "batch_size": int(batch_size), "lr": float(lr),
                    "lr_final": float(lr_final), "weight_decay": float(weight_decay), "seed": int(seed)}
        work = batch_size * Xtr.shape[1] * classes.size
    settings["standardize"] = standardize
    with threads_for(work if device.type == "cpu" else math.inf):
        if protocol == "lbfgs":
            W, b = _fit_lbfgs(Xtr, target, classes.size, float(C), int(max_iter), float(tol))
        else:
            W, b = _fit_reference(Xtr, target, classes.size, int(epochs), int(batch_size), float(lr),
                                  float(lr_final), float(weight_decay), int(seed))
    with torch.no_grad():
        scores = torch.addmm(b, Xte, W).cpu().numpy()
    top1, top5 = _accuracies(scores, yte)
    return ProbeResult(top1, top5, len(ytr), len(yte), int(classes.size), protocol, split.evaluation, settings)


def _as_tensors(split: Split, standardize: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and test features as float32 tensors, standardised with train statistics if asked."""
    X_train, X_test = split.X_train, split.X_test
    if standardize:
        n = X_train.shape[0]
        mean = X_train.mean(axis=0, dtype=np.float64)
        var = np.einsum("ij,ij->j", X_train, X_train, dtype=np.float64) / n - mean**2
        scale = np.sqrt(np.clip(var, 0.0, None))
        scale = np.where(scale > 1e-12 * np.maximum(np.abs(mean), 1.0), scale, 1.0)  # constants stay constant
        mean, inverse = mean.astype(np.float32), (1.0 / scale).astype(np.float32)
        X_train, X_test = (X_train - mean) * inverse, (X_test - mean) * inverse
    as_tensor = lambda X: torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).to(device)  # noqa: E731
    return as_tensor(X_train), as_tensor(X_test)


# -- kNN ------------------------------------------------------------------------------------
def knn_accuracy(
    X_train,
    y_train,
    X_test=None,
    y_test=None,
    *,
    protocol: str = "weighted-cosine",
    k: int | None = None,
    temperature: float = 0.07,
    holdout: float = 0.2,
    seed: int = 0,
    device: str = "auto",
) -> ProbeResult:
    """k-nearest-neighbour classification accuracy of ``X_test`` (m, d), ``y_test`` (m,) against
    ``X_train`` (n, d), ``y_train`` (n,).

    ``protocol='weighted-cosine'``: cosine neighbours voting with weight
    exp(similarity / ``temperature``), k = 20 by default. ``'majority-euclidean'``: Euclidean
    neighbours on raw features, one vote each, k = 5 by default. Without test arrays, a
    stratified ``holdout`` of the train set (drawn with ``seed``) is scored. Returns top-1 (and
    top-5 with more than 5 classes) as fractions.

    Raises:
        MetricsError: bad shapes, fewer than two classes, an unknown protocol, a bad k or
            temperature, k larger than the number of training samples.
        NonFiniteFeaturesError: NaN or infinite features.
        DeviceError: an unknown device, or a GPU that is not there.
    """
    if protocol not in KNN_PROTOCOLS:
        raise MetricsError(f"Unknown kNN protocol {protocol!r}: use {' or '.join(KNN_PROTOCOLS)}.")
    k = KNN_DEFAULT_K[protocol] if k is None else k
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise MetricsError(f"kNN k must be a positive integer; got {k!r}.")
    if not temperature > 0:
        raise MetricsError(f"kNN temperature must be positive; got {temperature!r}.")
    resolve_device(device)  # refuse an unknown device or a missing GPU before any work
    split = make_split(X_train, y_train, X_test, y_test, holdout=holdout, seed=seed, what="kNN")
    return _knn_accuracy(split, protocol, int(k), float(temperature), device)


def _knn_accuracy(split: Split, protocol: str, k: int, temperature: float, device: str) -> ProbeResult:
    """:func:`knn_accuracy` on a validated :class:`Split` with an explicit ``k`` >= 1."""
    if k > split.X_train.shape[0]:
        raise MetricsError(
            f"kNN k = {k} is larger than the {split.X_train.shape[0]} training samples; choose a smaller k."
        )
    classes, ytr, yte = _encode_classes(split.y_train, split.y_test)
    with threads_for(split.X_train.shape[0] * split.X_test.shape[0] * split.X_train.shape[1]):
        if protocol == "weighted-cosine":
            sims, idx = faiss_search(l2_normalize(split.X_train), l2_normalize(split.X_test), k, True, device)
            weights = np.exp((sims.astype(np.float64) - 1.0) / temperature)  # exp(s/T) times a constant
        else:
            _, idx = faiss_search(split.X_train, split.X_test, k, False, device)
            weights = np.ones(idx.shape, dtype=np.float64)
    m, C = idx.shape[0], classes.size
    flat = np.repeat(np.arange(m), k) * C + ytr[idx.ravel()]
    votes = np.bincount(flat, weights=weights.ravel(), minlength=m * C).reshape(m, C)
    top1, top5 = _accuracies(votes, yte)
    settings = {"protocol": protocol, "k": k}
    if protocol == "weighted-cosine":
        settings["temperature"] = temperature
    return ProbeResult(top1, top5, len(ytr), len(yte), int(C), protocol, split.evaluation, settings)
