"""faiss and torch each bring an OpenMP runtime: the project's metrics must work whichever of
faiss, torch or clusterprobe a notebook imports first.

Each order runs in a fresh interpreter and drives the project's own code paths that use both
runtimes in one process (FAISS k-means, the torch silhouette, the torch L-BFGS probe, a model
forward) and checks the numbers against scikit-learn, computed in the same process.
"""

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import {first}
    import numpy as np
    from sklearn.datasets import make_blobs
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import silhouette_score as sk_silhouette

    from clusterprobe.metrics import kmeans, linear_probe, nmi, silhouette_score
    from clusterprobe.models import ModelConfig, SSLModel
    import torch

    X, y = make_blobs(n_samples=3000, centers=8, n_features=32, cluster_std=1.0, random_state=0)
    X = X.astype("float32")
    result = kmeans(X, k=8, seeds=(1,), normalize=False)
    assert nmi(y, result.labels[0]) > 0.95, nmi(y, result.labels[0])
    ours = silhouette_score(X, y, metric="euclidean")
    assert abs(ours - sk_silhouette(X, y)) < 1e-5, (ours, sk_silhouette(X, y))
    probe = linear_probe(X[:2000], y[:2000], X[2000:], y[2000:])
    reference = LogisticRegression(max_iter=1000).fit(X[:2000], y[:2000]).score(X[2000:], y[2000:])
    assert abs(probe.top1 - reference) < 0.01, (probe.top1, reference)
    model = SSLModel(ModelConfig("resnet18", width=8, in_channels=3, cifar_stem=True)).eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(16, 3, 32, 32))).all()
    print("ok")
""")


@pytest.mark.parametrize("first", ["faiss", "torch", "clusterprobe.metrics"])
def test_project_code_with_faiss_and_torch_in_one_process(first):
    result = subprocess.run([sys.executable, "-c", SCRIPT.format(first=first)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
