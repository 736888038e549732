"""Sinkhorn-Knopp normalisation, as used by ReSA (target) and SwAV (codes).

Both use the same algorithm on a score matrix whose rows are this process's samples and whose
columns are "prototypes": all gathered momentum encodings for ReSA, the learned prototypes for
SwAV. The rows may be split over processes (data parallel), the columns never are, so the sums
over rows and the total are all-reduced and the sums over columns are local.
"""

from __future__ import annotations

import torch

from .. import distributed
from ..errors import TrainingInputError
from ..linalg import l2_normalize


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Turn scores into a nearly doubly stochastic assignment matrix.

    Args:
        scores: (m, K) float tensor; row i holds sample i's similarity to each of the K columns.
            Under DDP, m is this rank's share of the B = sum of m over ranks rows, and the K
            columns are the same on every rank.
        epsilon: entropic regularisation; the kernel is ``exp(scores / epsilon)``.
        iterations: number of (row, column) normalisation rounds.

    Returns:
        (m, K) float32 tensor ``A`` with every row summing to 1 and, over the global batch,
        every column summing to about B / K (1 for ReSA, where K = B).

    Computed in float32 without gradient, whatever the input's dtype or an enclosing autocast.
    The global maximum of ``scores / epsilon`` is subtracted before ``exp``: this is exact,
    because the matrix is divided by its total right after, and it avoids overflow. (Subtracting
    each row's own maximum would not be exact.) Following the specification, with
    ``Q = exp(scores / epsilon)^T`` of shape (K, B): Q /= sum(Q); then per iteration rows of Q
    sum to 1 then / K, columns sum to 1 then / B; finally Q *= B and A = Q^T.
    """
    if scores.dim() != 2:
        raise TrainingInputError(f"scores must be 2-D (samples, columns), got shape {tuple(scores.shape)}")
    with torch.autocast(device_type=scores.device.type, enabled=False):
        logits = scores.float() / epsilon
        shift = logits.max().clone()
        distributed.all_reduce_(shift, op="max")
        q = torch.exp(logits - shift).t()  # (K, m)
        num_columns = q.shape[0]  # K
        # filled on the device: torch.tensor(..., device=cuda) would copy from the host and wait for
        # every queued kernel (ReSA calls this once a step, SwAV once a view)
        batch = torch.full((), float(q.shape[1]), dtype=torch.float32, device=q.device)
        distributed.all_reduce_(batch)  # B = global number of samples
        total = q.sum()
        distributed.all_reduce_(total)
        q /= total
        for _ in range(iterations):
            row_sums = q.sum(dim=1, keepdim=True)  # over samples: split across ranks
            distributed.all_reduce_(row_sums)
            q /= row_sums
            q /= num_columns
            q /= q.sum(dim=0, keepdim=True)  # over the K columns: complete on every rank
            q /= batch
        q *= batch
        return q.t().contiguous()


@torch.no_grad()
def resa_target(
    h: torch.Tensor,
    h_momentum: torch.Tensor,
    epsilon: float = 0.05,
    iterations: int = 3,
    gathered: bool = False,
) -> torch.Tensor:
    """ReSA's target from the weak view's encodings (specification, loss steps 1-3).

    Args:
        h: (m, d) online encodings H of the weak view (any scale; detached and L2-normalised).
        h_momentum: (m, d) momentum encodings H' of the weak view, or (B, d) when ``gathered``.
            Under DDP they are gathered from all ranks first, so the target spans the global batch.
        epsilon, iterations: Sinkhorn settings (0.05 and 3 in the specification).

    Returns:
        (m, B) float32 target A with rows summing to 1 (B = global batch, m in one process).
    """
    with torch.autocast(device_type=h.device.type, enabled=False):
        h = l2_normalize(h.detach().float())
        h_m = l2_normalize(h_momentum.detach().float())
        if not gathered:
            h_m = distributed.gather(h_m)
        return sinkhorn_knopp(h @ h_m.t(), epsilon=epsilon, iterations=iterations)
