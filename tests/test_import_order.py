"""faiss and torch each bring an OpenMP runtime; loading both in either order must work."""

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import {first}, {second}
    import numpy as np
    import faiss, torch
    x = np.random.default_rng(0).standard_normal((3000, 32)).astype("float32")
    km = faiss.Kmeans(32, 8, niter=10, seed=1, max_points_per_centroid=10**6)
    km.train(x)
    _, assignment = km.index.search(x, 1)
    a = torch.randn(1024, 1024)
    product = a @ a
    conv = torch.nn.functional.conv2d(torch.randn(8, 16, 32, 32), torch.randn(32, 16, 3, 3))
    assert np.bincount(assignment.ravel(), minlength=8).min() > 0
    assert torch.isfinite(product).all() and conv.shape == (8, 32, 30, 30)
    print("ok")
""")


@pytest.mark.parametrize("first,second", [("faiss", "torch"), ("torch", "faiss")])
def test_faiss_and_torch_in_one_process(first, second):
    result = subprocess.run([sys.executable, "-c", SCRIPT.format(first=first, second=second)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
