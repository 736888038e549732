"""Sinkhorn-Knopp: the ReSA target's normalisation, checked against a plain float64 loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clusterprobe.trainer import resa_target, sinkhorn_knopp


def reference_sinkhorn(scores: np.ndarray, epsilon: float, iterations: int) -> np.ndarray:
    """The specification's steps, written out in float64 with explicit loops over rows/columns."""
    m, k = scores.shape
    q = np.exp(scores.astype(np.float64) / epsilon).T  # (K, m)
    q = q / q.sum()
    for _ in range(iterations):
        for row in range(k):
            q[row, :] = q[row, :] / q[row, :].sum() / k
        for column in range(m):
            q[:, column] = q[:, column] / q[:, column].sum() / m
    return (q * m).T


def correlated_encodings(m=64, d=32, noise=0.5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    h = torch.randn(m, d, generator=generator)
    return h, h + noise * torch.randn(m, d, generator=generator)


def test_rows_sum_to_one_and_columns_to_about_one():
    h, h_m = correlated_encodings()
    target = resa_target(h, h_m)
    assert target.shape == (64, 64) and target.dtype == torch.float32
    assert torch.allclose(target.sum(dim=1), torch.ones(64), atol=1e-5)
    deviation = (target.sum(dim=0) - 1).abs().max()
    assert deviation < 0.05
    assert (target >= 0).all()
    # More iterations converge towards a doubly stochastic matrix.
    converged = resa_target(h, h_m, iterations=50)
    assert (converged.sum(dim=0) - 1).abs().max() < min(5e-3, float(deviation))


@pytest.mark.parametrize("shape, epsilon, iterations", [((6, 6), 0.05, 3), ((16, 16), 0.1, 1), ((8, 5), 0.05, 3)])
def test_matches_reference_loop(shape, epsilon, iterations):
    generator = torch.Generator().manual_seed(1)
    scores = torch.rand(shape, generator=generator) * 2 - 1  # cosine-like range
    expected = reference_sinkhorn(scores.numpy(), epsilon, iterations)
    result = sinkhorn_knopp(scores, epsilon, iterations)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-4, atol=1e-7)


def test_non_square_swav_codes():
    """K prototypes, m samples: rows sum to 1, columns to about m / K (equipartition)."""
    generator = torch.Generator().manual_seed(2)
    scores = torch.randn(40, 10, generator=generator) * 0.1
    codes = sinkhorn_knopp(scores, 0.05, 3)
    assert torch.allclose(codes.sum(dim=1), torch.ones(40), atol=1e-5)
    assert torch.allclose(codes.sum(dim=0), torch.full((10,), 4.0), rtol=0.1)
    converged = sinkhorn_knopp(scores, 0.05, 30)
    assert torch.allclose(converged.sum(dim=0), torch.full((10,), 4.0), rtol=1e-3)


def test_global_max_shift_prevents_overflow_exactly():
    """exp(60 / 0.05) overflows even float64; the shift keeps the result exact and finite."""
    base = torch.rand(6, 6, generator=torch.Generator().manual_seed(3))
    shifted = base + 60.0
    a = sinkhorn_knopp(base, 0.05, 3)
    b = sinkhorn_knopp(shifted, 0.05, 3)
    assert torch.isfinite(b).all()
    assert torch.allclose(a, b, atol=1e-5)
    with np.errstate(over="ignore", invalid="ignore"):
        assert not np.isfinite(reference_sinkhorn(shifted.numpy(), 0.05, 3)).all()


def test_float32_without_gradient_under_low_precision():
    h, h_m = correlated_encodings(16, 8)
    h = h.requires_grad_()
    reference = resa_target(h.detach(), h_m)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        target = resa_target(h.to(torch.bfloat16), h_m.to(torch.bfloat16))
    assert target.dtype == torch.float32 and not target.requires_grad
    # bfloat16 inputs lose precision, but the computation itself ran in float32
    assert torch.allclose(target, reference, atol=0.05)
    full = resa_target(h, h_m)
    assert not full.requires_grad and torch.equal(full, reference)


def test_target_uses_normalised_encodings():
    h, h_m = correlated_encodings(12, 6)
    scales = torch.rand(12, 1) * 10 + 0.1
    assert torch.allclose(resa_target(h * scales, h_m * 3), resa_target(h, h_m), atol=1e-5)


def test_rejects_non_matrix():
    from clusterprobe.errors import TrainingInputError

    with pytest.raises(TrainingInputError, match=r"scores must be 2-D \(samples, columns\), got shape \(3,\)"):
        sinkhorn_knopp(torch.rand(3))


def test_sinkhorn_makes_no_tensor_from_host_data(monkeypatch):
    """``torch.tensor(x, device=cuda)`` copies x from the host and waits for every kernel queued
    before it (a GPU synchronisation every training step of ReSA and SwAV); the batch size is
    filled on the device instead, with the same value."""
    scores = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    expected = torch.from_numpy(reference_sinkhorn(scores.numpy(), 0.05, 3)).float()
    made_from_host = []
    real_tensor = torch.tensor

    def tensor(*args, **kwargs):
        made_from_host.append(kwargs.get("device"))
        return real_tensor(*args, **kwargs)

    monkeypatch.setattr(torch, "tensor", tensor)
    result = sinkhorn_knopp(scores, 0.05, 3)
    assert made_from_host == []
    torch.testing.assert_close(result, expected, rtol=1e-4, atol=1e-7)
    assert torch.allclose(result.sum(1), torch.ones(64), atol=1e-5)
