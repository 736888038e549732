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

import itertools
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from ..devices import resolve_device
from . import _torch_search
from ._device import faiss_search, search_backend, threads_for
from ..linalg import l2_normalize
from ._stream import DeviceRows, RowSubset, chunk_rows, chunks, memory_budget, read, to_tensor
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
    """Train and test arrays for a probe plus a description of where the test set came from.

    The feature arrays may be memory maps, or :class:`~._stream.RowSubset` views of one (a
    hold-out split): the probes read them in chunks of rows.
    """

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
    # the rows stay where they are (a memory-mapped bank is not copied); labels are O(n)
    return Split(RowSubset(X, idx_train), y[idx_train], RowSubset(X, idx_test), y[idx_test], evaluation)


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


def _topk_hits(scores: np.ndarray, targets: np.ndarray, k: int) -> int:
    """Number of rows of ``scores`` (m, C) whose top-k columns contain ``targets`` (m,)."""
    if k == 1:
        return int(np.count_nonzero(scores.argmax(axis=1) == targets))
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return int(np.count_nonzero((top == targets[:, None]).any(axis=1)))


class _Hits:
    """Top-1 and top-5 hits summed over chunks of test rows; :meth:`accuracies` as fractions."""

    def __init__(self, num_classes: int):
        self.top1 = self.top5 = self.m = 0
        self.five = num_classes > 5

    def add(self, scores: np.ndarray, targets: np.ndarray) -> None:
        self.top1 += _topk_hits(scores, targets, 1)
        if self.five:
            self.top5 += _topk_hits(scores, targets, 5)
        self.m += len(targets)

    def accuracies(self) -> tuple[float, float | None]:
        return self.top1 / self.m, (self.top5 / self.m if self.five else None)


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


def _loss_and_grad_rows(rows: DeviceRows, y: torch.Tensor, W: torch.Tensor, b: torch.Tensor, penalty: float):
    """:func:`_loss_and_grad` over all of ``rows``, a chunk at a time when they are not one piece
    (sums of the chunks' cross-entropies and gradients, divided by n at the end)."""
    pieces = rows.pieces()
    first = next(pieces)
    if first[1] - first[0] == rows.n:
        return _loss_and_grad(first[2], y, W, b, penalty)
    total = torch.zeros((), dtype=torch.float64, device=W.device)
    grad_W, grad_b = torch.zeros_like(W), torch.zeros_like(b)
    for start, stop, X in itertools.chain([first], pieces):
        target = y[start:stop]
        logits = torch.addmm(b, X, W)
        lse = torch.logsumexp(logits, dim=1)
        total += (lse - logits.gather(1, target[:, None]).squeeze(1)).sum(dtype=torch.float64)
        probs = logits.sub_(lse[:, None]).exp_()
        probs[torch.arange(stop - start, device=X.device), target] -= 1.0
        grad_W += torch.mm(probs.T, X).T
        grad_b += probs.sum(dim=0)
    n = rows.n
    loss = (total / n).to(W.dtype) + penalty * (W * W).sum()
    return loss, grad_W / n + (2.0 * penalty) * W, grad_b / n


def _preconditioner(X, rows: int = 20000, damping: float = 1e-2) -> torch.Tensor:
    """(Sigma + delta I)^(-1/2), Sigma the second-moment matrix of (a sample of) the rows of X.

    Multinomial logistic regression's Hessian is roughly Sigma (x) softmax curvature, so
    optimising V with W = M V makes it nearly isotropic: L-BFGS then needs ~25 evaluations
    instead of ~200 on correlated features, and still solves exactly the same problem.
    ``delta = damping * mean eigenvalue`` keeps near-constant directions harmless. ``X`` is a
    tensor or :class:`DeviceRows` (read a chunk at a time when not resident: O(d^2) memory).
    """
    source = X if isinstance(X, DeviceRows) else DeviceRows(X, None, X.device)
    n, d = source.n, source.d
    idx = None
    if n > rows:
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:rows].to(source.device)
    if source.resident is not None:
        X = source.resident if idx is None else source.resident[idx]
        sigma = (X.T @ X).double() / X.shape[0]
    else:  # a chunk of the (sampled) rows at a time
        sigma = torch.zeros((d, d), dtype=torch.float64, device=source.device)
        if idx is None:
            parts = (piece for _, _, piece in source.pieces())
        else:
            parts = (source.take(idx[a:b]) for a, b in chunks(idx.numel(), source.chunk))
        for piece in parts:
            sigma += (piece.T @ piece).double()
        sigma /= n if idx is None else idx.numel()
    evals, evecs = torch.linalg.eigh(sigma)
    evals = evals.clamp(min=0)
    delta = damping * float(evals.mean()) + 1e-12
    return ((evecs * (evals + delta).rsqrt()) @ evecs.T).to(torch.float32)


def _fit_lbfgs(X, y: torch.Tensor, C_classes: int, C: float, max_iter: int, tol: float):
    """Minimise mean CE(XW + b) + ||W||^2 / (2 C n) with full-batch L-BFGS; returns (W, b).

    ``X`` is a (n, d) tensor or :class:`DeviceRows` (read a chunk at a time when not resident).
    L-BFGS runs on V with W = M V (M from :func:`_preconditioner`); ``tol`` bounds the largest
    gradient entry with respect to (V, b).
    """
    rows = X if isinstance(X, DeviceRows) else DeviceRows(X, None, X.device)
    n, d = rows.n, rows.d
    M = _preconditioner(rows)
    V = torch.zeros((d, C_classes), dtype=M.dtype, device=rows.device)
    b = torch.zeros(C_classes, dtype=M.dtype, device=rows.device)
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
        loss, grad_W, b.grad = _loss_and_grad_rows(rows, y, M @ V, b, penalty)
        V.grad = M @ grad_W  # M is symmetric: d loss / dV = M^T d loss / dW
        return loss

    optimizer.step(closure)
    return M @ V, b


def _fit_reference(
    X: torch.Tensor, y: torch.Tensor, C_classes: int, epochs: int, batch_size: int,
    lr: float, lr_final: float, weight_decay: float, seed: int,
):
    """The reference protocol: Linear + Adam, LR decaying exponentially from lr (first epoch) to
    lr_final (last epoch), shuffled mini-batches; seeded. ``X`` is a (n, d) tensor or
    :class:`DeviceRows` (each batch gathered from the memory map when not resident)."""
    rows = X if isinstance(X, DeviceRows) else DeviceRows(X, None, X.device)
    n, d = rows.n, rows.d
    generator = torch.Generator().manual_seed(seed)
    # skip_init: the layer's own initialisation would draw from torch's global RNG
    layer = torch.nn.utils.skip_init(torch.nn.Linear, d, C_classes).to(rows.device)
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
        order = torch.randperm(n, generator=generator).to(rows.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            loss = torch.nn.functional.cross_entropy(layer(rows.take(idx)), y[idx])
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

    The features may be read-only memory maps (feature banks); they are read in chunks and
    never copied whole unless the copy fits. Extra memory (host), whatever n: about the
    working-memory budget (256 MiB, ``CLUSTERPROBE_METRICS_MEMORY``; the standardised rows are
    kept in memory only when they fit in it, otherwise standardised chunk by chunk at every
    pass) + 8 d^2 (the preconditioner) + 8 * 21 d C for the weights and L-BFGS's history of
    20 steps (0.33 GiB at d 2048, C 1000), plus O(n) labels. On a GPU the (standardised) rows are kept in GPU memory
    when they fit in half of what is free, else sent a chunk at a time.

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
    scale = _standardization(split.X_train) if standardize else None
    C_classes = classes.size
    Xtr = DeviceRows(split.X_train, scale, device, bytes_per_row=12 * C_classes)  # + logits, softmax, gradient
    target = torch.from_numpy(ytr).to(device)
    if protocol == "lbfgs":
        settings = {"protocol": protocol, "C": float(C), "max_iter": int(max_iter), "tol": float(tol)}
        work = min(Xtr.n, Xtr.chunk) * Xtr.d * C_classes
    else:
        settings = {"protocol": protocol, "epochs": int(epochs), "batch_size": int(batch_size), "lr": float(lr),
                    "lr_final": float(lr_final), "weight_decay": float(weight_decay), "seed": int(seed)}
        work = batch_size * Xtr.d * C_classes
    settings["standardize"] = standardize
    with threads_for(work if device.type == "cpu" else math.inf):
        if protocol == "lbfgs":
            W, b = _fit_lbfgs(Xtr, target, C_classes, float(C), int(max_iter), float(tol))
        else:
            W, b = _fit_reference(Xtr, target, C_classes, int(epochs), int(batch_size), float(lr),
                                  float(lr_final), float(weight_decay), int(seed))
    del Xtr
    hits = _Hits(C_classes)
    Xte = DeviceRows(split.X_test, scale, device, bytes_per_row=8 * C_classes)
    with torch.no_grad():
        for start, stop, X in Xte.pieces():
            hits.add(torch.addmm(b, X, W).cpu().numpy(), yte[start:stop])
    top1, top5 = hits.accuracies()
    return ProbeResult(top1, top5, len(ytr), len(yte), int(C_classes), protocol, split.evaluation, settings)


def _standardization(X) -> tuple[np.ndarray, np.ndarray]:
    """(mean, 1 / std) float32 rows of the columns of ``X`` (n, d), accumulated in float64 over
    chunks of rows; constant columns get scale 1 (they stay constant)."""
    n, d = X.shape
    total = np.zeros(d, dtype=np.float64)
    squares = np.zeros(d, dtype=np.float64)
    for start, stop in chunks(n, chunk_rows(4 * d, minimum=64)):
        block = read(X, start, stop)
        total += block.sum(axis=0, dtype=np.float64)
        squares += np.einsum("ij,ij->j", block, block, dtype=np.float64)
    mean = total / n
    var = squares / n - mean**2
    scale = np.sqrt(np.clip(var, 0.0, None))
    scale = np.where(scale > 1e-12 * np.maximum(np.abs(mean), 1.0), scale, 1.0)  # constants stay constant
    return mean.astype(np.float32), (1.0 / scale).astype(np.float32)


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

    The features may be read-only memory maps (feature banks): both sets are read (and
    normalised) in chunks, every train chunk searched with every test chunk, keeping the running
    k best. Extra memory (host), whatever n: about the working-memory budget (256 MiB,
    ``CLUSTERPROBE_METRICS_MEMORY``) + 20 m k bytes for the m test rows' neighbours and weights.

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
    cosine = protocol == "weighted-cosine"
    with threads_for(split.X_train.shape[0] * split.X_test.shape[0] * split.X_train.shape[1]):
        sims, idx = _neighbours(split.X_train, split.X_test, k, cosine, device)
    if cosine:
        weights = np.exp((sims.astype(np.float64) - 1.0) / temperature)  # exp(s/T) times a constant
    else:
        weights = np.ones(idx.shape, dtype=np.float64)
    m, C = idx.shape[0], classes.size
    hits = _Hits(C)
    for start, stop in chunks(m, chunk_rows(8 * C * 3 + 24 * k, minimum=1)):  # (rows, C) votes at a time
        rows = stop - start
        flat = np.repeat(np.arange(rows), k) * C + ytr[idx[start:stop].ravel()]
        votes = np.bincount(flat, weights=weights[start:stop].ravel(), minlength=rows * C).reshape(rows, C)
        hits.add(votes, yte[start:stop])
    top1, top5 = hits.accuracies()
    settings = {"protocol": protocol, "k": k}
    if cosine:
        settings["temperature"] = temperature
    return ProbeResult(top1, top5, len(ytr), len(yte), int(C), protocol, split.evaluation, settings)


def _neighbours(database, queries, k: int, cosine: bool, device: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of ``database`` (n, d) for each row of ``queries`` (m, d): scores (m, k)
    and indices (m, k), best first; cosine similarities of L2-normalised rows or squared
    Euclidean distances, by FAISS.

    Both are read in chunks of rows (each within half the working-memory budget; database
    chunks a multiple of 1024 rows, FAISS's block, where they can be) and normalised as they are
    read; every database chunk is searched with every query chunk and the running k best kept, ties going
    to the smaller index. With one chunk each this is one FAISS search, as before.

    Extra memory: about the working-memory budget (256 MiB) plus 12 m k bytes (the running
    neighbours) and FAISS's blocks (4096 x 1024 floats), whatever n. On a CUDA device that FAISS
    cannot use, the search runs as torch matrix products there instead
    (:func:`~._torch_search.search`; the database kept in GPU memory when it fits in half of what is free).
    """
    n, d = database.shape
    m = queries.shape[0]
    if search_backend(device) == "torch":  # a GPU that FAISS cannot use: torch matrix products there
        dev = resolve_device(device)
        return _torch_search.search(_torch_search.Shards(database, _torch_search.devices_for(dev),
                                                         bytes_per_row=8 * k, normalize=cosine),
                                    DeviceRows(queries, None, dev, bytes_per_row=16 * k, normalize=cosine),
                                    k, inner_product=cosine)
    db_rows = chunk_rows(8 * d, memory=memory_budget() // 2, minimum=64, multiple=1024)
    q_rows = chunk_rows(8 * d + 24 * k, memory=memory_budget() // 2, minimum=64)

    def rows(X, start, stop):
        block = read(X, start, stop)
        return l2_normalize(block) if cosine else block

    if n <= db_rows and m <= q_rows:
        return faiss_search(rows(database, 0, n), rows(queries, 0, m), k, cosine, device)
    worst = -np.inf if cosine else np.inf
    best_scores = np.full((m, k), worst, dtype=np.float32)
    best_index = np.full((m, k), -1, dtype=np.int64)
    for d0, d1 in chunks(n, db_rows):
        block = rows(database, d0, d1)
        kk = min(k, d1 - d0)
        for q0, q1 in chunks(m, q_rows):
            scores, index = faiss_search(block, rows(queries, q0, q1), kk, cosine, device)
            both_scores = np.concatenate([best_scores[q0:q1], scores], axis=1)
            both_index = np.concatenate([best_index[q0:q1], index + d0], axis=1)
            key = -both_scores if cosine else both_scores
            # best first; equal scores: the smaller index first (-1, no neighbour yet, is worst)
            order = np.lexsort((np.where(both_index < 0, np.iinfo(np.int64).max, both_index), key), axis=1)[:, :k]
            best_scores[q0:q1] = np.take_along_axis(both_scores, order, axis=1)
            best_index[q0:q1] = np.take_along_axis(both_index, order, axis=1)
    return best_scores, best_index
