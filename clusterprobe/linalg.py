"""Row-wise L2 normalisation: the one implementation used by the trainer, banks and metrics.

Every row is divided by its Euclidean norm; an all-zero row stays zero (it has no direction) in
NumPy and torch alike. Torch tensors go through :func:`torch.nn.functional.normalize` (it keeps
the autograd graph, and training stays bit-for-bit what it was); NumPy arrays accumulate the norm
in float64 and keep their dtype.
"""

from __future__ import annotations

import numpy as np


def l2_normalize(X):
    """Rows of ``X`` (n, d) scaled to unit L2 norm, all-zero rows left at zero; a new array.

    ``X`` is a NumPy array or a torch tensor; the result has the same type, dtype and device.
    """
    if hasattr(X, "detach"):  # a torch tensor
        import torch.nn.functional as F

        return F.normalize(X, dim=1)
    norms = np.sqrt(np.einsum("ij,ij->i", X, X, dtype=np.float64))
    scale = np.zeros_like(norms)
    np.divide(1.0, norms, out=scale, where=norms > 0)
    return X * scale.astype(X.dtype)[:, None]
