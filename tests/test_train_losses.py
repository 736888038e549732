"""Losses on hand-made tensors against independent float64 NumPy computations, and gradient flow:
nothing reaches the momentum branch or the target."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clusterprobe.errors import TrainingInputError
from clusterprobe.trainer import (ReSALoss, TrainConfig, barlow_twins_loss, build_method,
                                byol_loss, nt_xent_loss, resa_loss, resolve_config, swav_loss, vicreg_loss)


def _np(x):
    return x.detach().double().numpy()


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _log_softmax_rows(logits):
    out = np.empty_like(logits)
    for i, row in enumerate(logits):
        top = row.max()
        out[i] = row - top - math.log(sum(math.exp(v - top) for v in row))
    return out


def _random(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# ReSA
def reference_resa(z, zm, target, tau, transposed=False):
    z = [_unit(_np(v)) for v in z]
    zm = [_unit(_np(v)) for v in zm]
    a = _np(target)
    total = 0.0
    for v, u in ((0, 1), (1, 0)):
        logits = z[v] @ zm[u].T / tau
        m = logits.shape[0]
        total += 0.5 * -sum(a[i, j] * _log_softmax_rows(logits)[i, j] for i in range(m) for j in range(logits.shape[1])) / m
        if transposed:
            columns = _log_softmax_rows(logits.T).T  # softmax down each column
            total += 0.5 * -(a * columns).sum() / logits.shape[1]
    return total


def test_resa_loss_on_hand_made_tensors():
    z = [torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]), torch.tensor([[0.5, 0.5], [0.0, 1.0], [2.0, 0.1]])]
    zm = [torch.tensor([[1.0, 0.2], [0.1, 1.0], [1.0, 1.0]]), torch.tensor([[0.9, 0.0], [0.0, 1.0], [1.0, 0.8]])]
    target = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.7, 0.2], [0.1, 0.2, 0.7]])
    loss = resa_loss(z, zm, target, temperature=0.4)
    assert loss.item() == pytest.approx(reference_resa(z, zm, target, 0.4), rel=1e-6)
    # identity-like target on identical embeddings: the loss is the CE of a sharp softmax
    e = torch.eye(3)
    sharp = resa_loss([e, e], [e, e], e, temperature=0.4).item()
    expected = -math.log(math.exp(2.5) / (math.exp(2.5) + 2))
    assert sharp == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("transposed", [False, True])
def test_resa_loss_matches_reference_random(transposed):
    m, d = 7, 5
    z = [_random(m, d, seed=1), _random(m, d, seed=2)]
    zm = [_random(m, d, seed=3), _random(m, d, seed=4)]
    target = torch.softmax(_random(m, m, seed=5), dim=1)
    loss = resa_loss(z, zm, target, temperature=0.4, transposed=transposed)
    assert loss.item() == pytest.approx(reference_resa(z, zm, target, 0.4, transposed), rel=1e-5)


def test_resa_loss_rejects_bad_shapes():
    z = [_random(4, 3), _random(4, 3)]
    with pytest.raises(TrainingInputError, match=r"target has shape \(4, 5\) but z has 4 rows and z_momentum 4"):
        resa_loss(z, z, torch.ones(4, 5) / 5)
    with pytest.raises(TrainingInputError, match="two views"):
        resa_loss(z[:1], z, torch.eye(4))
    with pytest.raises(TrainingInputError, match=r"transposed term needs the whole \(square\) matrix"):
        resa_loss([v[:2] for v in z], z, torch.ones(2, 4) / 4, transposed=True)
    with pytest.raises(ValueError):  # still a ValueError for callers that catch those
        resa_loss(z[:1], z, torch.eye(4))


def test_resa_gradients_do_not_reach_momentum_or_target():
    m, d = 6, 4
    h = _random(m, 8, seed=1).requires_grad_()
    h_m = _random(m, 8, seed=2).requires_grad_()
    z = [_random(m, d, seed=3).requires_grad_(), _random(m, d, seed=4).requires_grad_()]
    zm = [_random(m, d, seed=5).requires_grad_(), _random(m, d, seed=6).requires_grad_()]
    loss, target = ReSALoss()(h, h_m, z, zm)
    assert not target.requires_grad
    loss.backward()
    assert h.grad is None and h_m.grad is None  # the target is a constant
    assert all(v.grad is None for v in zm)
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in z)
    # A target with requires_grad is detached as well.
    t = torch.full((m, m), 1.0 / m, requires_grad=True)
    resa_loss(z, zm, t).backward()
    assert t.grad is None


def test_resa_training_step_leaves_momentum_branch_without_gradient():
    config = resolve_config(TrainConfig(method="resa", dataset="digits", epochs=1, batch_size=8, width=4,
                                        projector_dims=[16, 16, 8], out="unused"))
    torch.manual_seed(0)
    method = build_method(config, 1, True, total_steps=10, steps_per_epoch=10)
    method.train()
    views = [_random(8, 1, 8, 8, seed=1), _random(8, 1, 8, 8, seed=2)]
    loss, logs = method.training_step(views, step=0, epoch=0)
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in method.momentum.parameters())
    online = [p for p in method.online.parameters()]
    assert all(p.grad is not None for p in online)
    assert logs["ema"] == pytest.approx(0.996)


# ---------------------------------------------------------------------------------------------
# baselines
def test_nt_xent_matches_reference():
    m, d, t = 5, 4, 0.2
    z0, z1 = _random(m, d, seed=1), _random(m, d, seed=2)
    e = _unit(np.concatenate([_np(z0), _np(z1)]))
    total = 0.0
    for i in range(2 * m):
        positive = (i + m) % (2 * m)
        denominator = sum(math.exp(e[i] @ e[k] / t) for k in range(2 * m) if k != i)
        total += -math.log(math.exp(e[i] @ e[positive] / t) / denominator)
    assert nt_xent_loss(z0, z1, t).item() == pytest.approx(total / (2 * m), rel=1e-5)


def test_byol_loss_matches_reference():
    p, z = _random(6, 3, seed=1), _random(6, 3, seed=2)
    a, b = _unit(_np(p)), _unit(_np(z))
    expected = np.mean([2 - 2 * float(a[i] @ b[i]) for i in range(6)])
    assert byol_loss(p, z).item() == pytest.approx(expected, rel=1e-6)
    assert byol_loss(p, p).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(p, -p).item() == pytest.approx(4.0, rel=1e-6)


def test_vicreg_loss_matches_reference():
    n, d = 8, 3
    z0, z1 = _random(n, d, seed=1) * 0.5, _random(n, d, seed=2) * 2
    x, y = _np(z0), _np(z1)
    invariance = ((x - y) ** 2).mean()

    def var_cov(a):
        a = a - a.mean(axis=0)
        std = np.sqrt(a.var(axis=0, ddof=1) + 1e-4)
        cov = a.T @ a / (n - 1)
        off = sum(cov[i, j] ** 2 for i in range(d) for j in range(d) if i != j) / d
        return np.maximum(0, 1 - std).mean() / 2, off

    vx, cx = var_cov(x)
    vy, cy = var_cov(y)
    expected = 25 * invariance + 25 * (vx + vy) + 1 * (cx + cy)
    assert vicreg_loss(z0, z1).item() == pytest.approx(expected, rel=1e-5)


def test_barlow_twins_loss_matches_reference():
    n, d, lam = 10, 4, 0.0051
    z0, z1 = _random(n, d, seed=1), _random(n, d, seed=2) + _random(n, d, seed=1)
    x, y = _np(z0), _np(z1)
    x = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)
    y = (y - y.mean(0)) / np.sqrt(y.var(0) + 1e-5)
    c = x.T @ y / n
    expected = sum((1 - c[i, i]) ** 2 for i in range(d)) + lam * sum(c[i, j] ** 2 for i in range(d) for j in range(d) if i != j)
    assert barlow_twins_loss(z0, z1, lam).item() == pytest.approx(expected, rel=1e-5)
    assert barlow_twins_loss(z0, z1, lam, scale=0.1).item() == pytest.approx(0.1 * expected, rel=1e-5)


def test_swav_loss_matches_reference():
    m, k, t = 6, 4, 0.1
    scores = [_random(m, k, seed=1) * 0.3, _random(m, k, seed=2) * 0.3]
    codes = [torch.softmax(_random(m, k, seed=3), 1), torch.softmax(_random(m, k, seed=4), 1)]
    s = [_np(v) / t for v in scores]
    q = [_np(v) for v in codes]
    expected = 0.5 * (-(q[0] * _log_softmax_rows(s[1])).sum(1).mean() - (q[1] * _log_softmax_rows(s[0])).sum(1).mean())
    assert swav_loss(scores, codes, t).item() == pytest.approx(expected, rel=1e-5)


def test_losses_compute_in_float32_from_low_precision():
    z0, z1 = _random(8, 4, seed=1), _random(8, 4, seed=2)
    reference = nt_xent_loss(z0, z1)
    low = nt_xent_loss(z0.bfloat16(), z1.bfloat16())
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(reference.item(), rel=0.02)


def test_resa_step_under_low_precision_autocast_keeps_float32_loss_and_target():
    """The AMP path (bfloat16 autocast; CUDA in training, CPU here): forward passes in low
    precision, the Sinkhorn target and the loss in float32."""
    import functools

    config = resolve_config(TrainConfig(method="resa", dataset="digits", epochs=1, batch_size=8, width=4,
                                        projector_dims=[16, 16, 8], out="unused"))
    torch.manual_seed(0)
    method = build_method(config, 1, True, total_steps=10, steps_per_epoch=10)
    method.train()
    method.autocast = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16)
    seen = {}
    original = method.criterion.forward

    def spy(h, h_momentum, z, z_momentum):
        seen["h_dtype"] = h.dtype
        loss, target = original(h, h_momentum, z, z_momentum)
        seen["target"] = target
        return loss, target

    method.criterion.forward = spy
    views = [_random(8, 1, 8, 8, seed=1), _random(8, 1, 8, 8, seed=2)]
    loss, _ = method.training_step(views, 0, 0)
    assert seen["h_dtype"] == torch.bfloat16  # the encoders ran in low precision
    assert seen["target"].dtype == torch.float32 and loss.dtype == torch.float32
    assert torch.isfinite(loss)
    loss.backward()
