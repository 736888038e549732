"""The one L2 normalisation: NumPy and torch give the same rows, zero rows stay zero."""

import numpy as np
import torch
import torch.nn.functional as F

from clusterprobe.linalg import l2_normalize


def test_numpy_and_torch_agree_and_zero_rows_stay_zero():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 7)).astype(np.float32) * rng.uniform(0.01, 100, size=(50, 1)).astype(np.float32)
    X[3] = 0.0
    out_np = l2_normalize(X)
    out_torch = l2_normalize(torch.from_numpy(X))
    assert out_np.dtype == np.float32 and isinstance(out_torch, torch.Tensor)
    reference = X / np.linalg.norm(X.astype(np.float64), axis=1, keepdims=True).clip(min=1e-300)
    np.testing.assert_allclose(out_np, reference, rtol=1e-6)
    np.testing.assert_allclose(out_torch.numpy(), reference, rtol=1e-6)
    assert not out_np[3].any() and not out_torch[3].any()
    norms = np.linalg.norm(np.delete(out_np, 3, axis=0), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-6)
    assert not np.shares_memory(out_np, X)


def test_torch_keeps_the_graph_of_functional_normalize():
    x = torch.randn(8, 4, requires_grad=True)
    l2_normalize(x).sum().backward()
    y = x.detach().clone().requires_grad_(True)
    F.normalize(y, dim=1).sum().backward()
    assert torch.equal(x.grad, y.grad)
