"""Loss functions of the built-in methods, each a plain function on tensors (and ReSA's also an
``nn.Module``), checkable on hand-made inputs.

Shapes: ``m`` = samples of this process, ``B`` = samples of the global batch (``B = m`` in one
process), ``d`` = embedding size. All losses compute in float32 whatever the input dtype.

Under torchrun the functions that need the whole batch gather it themselves through
:mod:`clusterprobe.distributed` (identity in one process), so the loss of each rank,
averaged over ranks (what DDP's gradient averaging optimises), equals the one-process loss of the
global batch:

- :func:`resa_loss`: cross-entropy of the Sinkhorn target and the cross-view predictions.
- :func:`nt_xent_loss`: SimCLR's normalised temperature-scaled cross-entropy.
- :func:`byol_loss`: BYOL's normalised MSE ``2 - 2 cos``.
- :func:`vicreg_loss`: VICReg's invariance, variance and covariance terms.
- :func:`barlow_twins_loss`: Barlow Twins' cross-correlation to identity.
- :func:`swav_loss`: SwAV's swapped prediction of Sinkhorn codes.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..errors import TrainingInputError
from ..linalg import l2_normalize
from .sinkhorn import resa_target


def _cross_entropy(target: torch.Tensor, logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``-(1/n) sum_ij target_ij log softmax(logits)_ij``, softmax and sum along ``dim``, n the
    number of distributions (rows for dim=1, columns for dim=0)."""
    log_p = F.log_softmax(logits, dim=dim)
    return -(target * log_p).sum(dim=dim).mean()


# ---------------------------------------------------------------------------------------------
# ReSA
def resa_loss(
    z: Sequence[torch.Tensor],
    z_momentum: Sequence[torch.Tensor],
    target: torch.Tensor,
    temperature: float = 0.4,
    transposed: bool = False,
) -> torch.Tensor:
    """ReSA's loss (specification, loss steps 4-6).

    Args:
        z: ``[z_0, z_1]``, the online embeddings of the weak (0) and strong (1) views, each (m, d),
            with gradient (the projector output, or the predictor output when there is one).
        z_momentum: ``[z'_0, z'_1]``, the momentum embeddings of the same views, each (K, d),
            without gradient (detached here); K = m in one process, the global batch B under DDP
            (gathered from all ranks, in rank order).
        target: (m, K) Sinkhorn target A (rows sum to 1), e.g. from
            :func:`clusterprobe.trainer.sinkhorn.resa_target`; treated as a constant.
        temperature: tau of the predictions (0.4).
        transposed: add the earlier form's column-wise term (default off). It needs the whole
            matrix (m = K); under DDP pass all ranks' ``z`` and ``target`` (ReSA's training step
            does this).

    Returns:
        Scalar ``1/2 [CE(A, P(0->1)) + CE(A, P(1->0))]`` with ``P(v->u) = row-softmax(n(z_v)
        n(z'_u)^T / tau)`` and ``CE(A, P) = -(1/m) sum_ij A_ij log P_ij``; plus, with
        ``transposed``, ``1/2 [CE_col(A, P(0->1)) + CE_col(A, P(1->0))]`` where the column-wise
        cross-entropy uses the column-softmax of the same logits and averages over the K columns.
    """
    if len(z) != 2 or len(z_momentum) != 2:
        raise TrainingInputError("resa_loss expects two views: z=[z_0, z_1], z_momentum=[z'_0, z'_1].")
    target = target.detach().float()
    online = [l2_normalize(v.float()) for v in z]
    momentum = [l2_normalize(v.detach().float()) for v in z_momentum]
    if target.shape != (online[0].shape[0], momentum[0].shape[0]):
        raise TrainingInputError(
            f"target has shape {tuple(target.shape)} but z has {online[0].shape[0]} rows and "
            f"z_momentum {momentum[0].shape[0]}."
        )
    if transposed and target.shape[0] != target.shape[1]:
        raise TrainingInputError("The transposed term needs the whole (square) matrix: pass all ranks' z and target.")
    loss = z[0].new_zeros((), dtype=torch.float32)
    for v, u in ((0, 1), (1, 0)):
        logits = online[v] @ momentum[u].t() / temperature
        loss = loss + 0.5 * _cross_entropy(target, logits, dim=1)
        if transposed:
            loss = loss + 0.5 * _cross_entropy(target, logits, dim=0)
    return loss


class ReSALoss(nn.Module):
    """ReSA's whole loss from encodings and embeddings: Sinkhorn target + :func:`resa_loss`.

    ``forward(h, h_momentum, z, z_momentum)``:

    - ``h``: (m, d_h) online encodings H of the weak view (detached inside);
    - ``h_momentum``: (m, d_h) momentum encodings H' of the weak view (gathered inside under DDP);
    - ``z``: ``[z_0, z_1]`` online embeddings, each (m, d), with gradient;
    - ``z_momentum``: ``[z'_0, z'_1]`` momentum embeddings, each (m, d) (gathered inside).

    Returns ``(loss, target)``; the target is computed without gradient, in float32.
    """

    def __init__(self, temperature: float = 0.4, epsilon: float = 0.05, iterations: int = 3,
                 transposed: bool = False):
        super().__init__()
        self.temperature = temperature
        self.epsilon = epsilon
        self.iterations = iterations
        self.transposed = transposed

    def forward(self, h, h_momentum, z, z_momentum):
        target = resa_target(h, h_momentum, self.epsilon, self.iterations)
        with torch.no_grad():
            z_momentum = [distributed.gather(v.detach()) for v in z_momentum]
        if self.transposed and distributed.is_distributed():
            z = [distributed.gather(v, grad=True) for v in z]
            target = distributed.gather(target)
        return resa_loss(z, z_momentum, target, self.temperature, self.transposed), target

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, epsilon={self.epsilon}, "
                f"iterations={self.iterations}, transposed={self.transposed}")


# ---------------------------------------------------------------------------------------------
# SimCLR
def nt_xent_loss(z0: torch.Tensor, z1: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's NT-Xent loss.

    Args:
        z0, z1: (m, d) projections of the two views of the same m images (row i of z0 and of z1
            form a positive pair); L2-normalised here.
        temperature: softmax temperature (solo-learn CIFAR: 0.2; SimCLR paper: 0.5).

    Returns:
        Scalar mean over the 2m anchors of ``-log( exp(s_pos/t) / sum_{k != anchor} exp(s_k/t) )``,
        the 2B - 1 candidates being every other embedding of the global batch (gathered from all
        ranks with gradient under DDP).
    """
    a0, a1 = l2_normalize(z0.float()), l2_normalize(z1.float())
    m = a0.shape[0]
    k0, k1 = distributed.gather(a0, grad=True), distributed.gather(a1, grad=True)
    b = k0.shape[0]
    keys = torch.cat([k0, k1])  # (2B, d)
    anchors = torch.cat([a0, a1])  # (2m, d)
    offset = distributed.rank() * m
    local = torch.arange(m, device=a0.device) + offset
    self_index = torch.cat([local, local + b])
    positive = torch.cat([local + b, local])
    logits = anchors @ keys.t() / temperature
    logits[torch.arange(2 * m, device=a0.device), self_index] = float("-inf")
    return F.cross_entropy(logits, positive)


# ---------------------------------------------------------------------------------------------
# BYOL
def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss for one direction: ``mean_i (2 - 2 cos(p_i, z'_i))``.

    Args:
        prediction: (m, d) online predictor outputs, with gradient.
        target: (m, d) momentum projections of the *other* view (detached here).

    The method sums both directions: ``byol_loss(p_0, z'_1) + byol_loss(p_1, z'_0)``.
    """
    p = l2_normalize(prediction.float())
    t = l2_normalize(target.detach().float())
    return (2 - 2 * (p * t).sum(dim=1)).mean()


# ---------------------------------------------------------------------------------------------
# VICReg
def _off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    n = matrix.shape[0]
    return matrix.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def vicreg_loss(
    z0: torch.Tensor,
    z1: torch.Tensor,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    eps: float = 1e-4,
) -> torch.Tensor:
    """VICReg's loss on (m, d) projections of two views (gathered over ranks with gradient).

    ``sim_weight * MSE(z0, z1) + var_weight * [mean relu(1 - std(z0)) + mean relu(1 - std(z1))] / 2
    + cov_weight * [sum offdiag(cov(z0))^2 + sum offdiag(cov(z1))^2] / d``, where ``std`` is
    ``sqrt(var + eps)`` per dimension (unbiased variance) and ``cov`` is the unbiased covariance.
    """
    x = distributed.gather(z0.float(), grad=True)
    y = distributed.gather(z1.float(), grad=True)
    n, d = x.shape
    invariance = F.mse_loss(x, y)
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + eps)
    std_y = torch.sqrt(y.var(dim=0) + eps)
    variance = F.relu(1 - std_x).mean() / 2 + F.relu(1 - std_y).mean() / 2
    cov_x = (x.t() @ x) / (n - 1)
    cov_y = (y.t() @ y) / (n - 1)
    covariance = _off_diagonal(cov_x).pow(2).sum() / d + _off_diagonal(cov_y).pow(2).sum() / d
    return sim_weight * invariance + var_weight * variance + cov_weight * covariance


# ---------------------------------------------------------------------------------------------
# Barlow Twins
def barlow_twins_loss(
    z0: torch.Tensor, z1: torch.Tensor, lambda_offdiag: float = 0.0051, scale: float = 1.0,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Barlow Twins' loss on (m, d) projections of two views (gathered over ranks with gradient).

    Each is standardised per dimension over the batch (affine-free BatchNorm: biased variance,
    ``eps``); ``C = z0n^T z1n / B`` (d x d); loss ``scale * [sum_i (1 - C_ii)^2 + lambda_offdiag
    * sum_{i != j} C_ij^2]`` (solo-learn's CIFAR recipe uses ``scale = 0.1``).
    """
    x = distributed.gather(z0.float(), grad=True)
    y = distributed.gather(z1.float(), grad=True)
    n = x.shape[0]
    x = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + eps)
    y = (y - y.mean(0)) / torch.sqrt(y.var(0, unbiased=False) + eps)
    c = x.t() @ y / n
    on_diagonal = (torch.diagonal(c) - 1).pow(2).sum()
    off_diagonal = _off_diagonal(c).pow(2).sum()
    return scale * (on_diagonal + lambda_offdiag * off_diagonal)


# ---------------------------------------------------------------------------------------------
# SwAV
def swav_loss(scores: Sequence[torch.Tensor], codes: Sequence[torch.Tensor], temperature: float = 0.1) -> torch.Tensor:
    """SwAV's swapped prediction loss.

    Args:
        scores: per view, (m, K) similarities of the L2-normalised projections to the
            L2-normalised prototypes, with gradient.
        codes: per view, (m, K) Sinkhorn codes q (rows sum to 1) computed from the detached
            scores (:func:`clusterprobe.trainer.sinkhorn.sinkhorn_knopp`).
        temperature: softmax temperature (0.1).

    Returns:
        Mean over ordered view pairs (v, u), v != u, of ``-(1/m) sum_i q_v[i] . log softmax(
        scores_u[i] / temperature)``.
    """
    terms = []
    for v, q in enumerate(codes):
        for u, s in enumerate(scores):
            if u != v:
                terms.append(_cross_entropy(q.detach().float(), s.float() / temperature, dim=1))
    return torch.stack(terms).mean()
