"""Spectral summaries of a representation: RankMe effective rank (Garrido et al., ICML 2023)."""

from __future__ import annotations

import numpy as np

from ._validation import MetricsError, as_features

RANKME_EPS = 1e-7


def singular_values(X, *, chunk: int = 8192) -> np.ndarray:
    """Singular values of ``X`` (n, d), largest first, shape (min(n, d),), in float64.

    Computed from the eigenvalues of the smaller Gram matrix, accumulated in float64 ``chunk``
    rows at a time, so memory stays O(d^2) beyond ``X`` itself.
    """
    return _singular_values(as_features(X, "RankMe features"), chunk)


def _singular_values(X: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """:func:`singular_values` of validated ``X`` (n, d) float32 or float16."""
    n, d = X.shape
    if d <= n:
        gram = np.zeros((d, d), dtype=np.float64)
        for start in range(0, n, chunk):
            block = X[start : start + chunk].astype(np.float64)
            gram += block.T @ block
    else:
        X64 = X.astype(np.float64)
        gram = X64 @ X64.T
    eig = np.linalg.eigvalsh(gram)[::-1]
    return np.sqrt(np.clip(eig, 0.0, None))


def rankme(X, *, eps: float = RANKME_EPS) -> float:
    """RankMe effective rank of ``X`` (n, d): exp of the entropy of the normalised singular values.

    p_k = sigma_k / sum(sigma) + eps, RankMe = exp(-sum_k p_k log p_k); between 1 and
    min(n, d). Features are used as given (not centred), as in the RankMe paper.

    Raises:
        MetricsError: bad shapes, or all-zero features (RankMe is undefined).
        NonFiniteFeaturesError: NaN or infinite features.
    """
    return _rankme(as_features(X, "RankMe features"), eps)


def _rankme(X: np.ndarray, eps: float = RANKME_EPS) -> float:
    """:func:`rankme` of validated ``X`` (n, d) float32 or float16."""
    sigma = _singular_values(X)
    total = sigma.sum()
    if total <= 0:
        raise MetricsError("RankMe is undefined for all-zero features (every singular value is 0).")
    p = sigma / total + eps
    return float(np.exp(-(p * np.log(p)).sum()))
