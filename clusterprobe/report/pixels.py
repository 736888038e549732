"""The raw-pixels reference: the metric suite on the flattened, normalised input images.

A representation worth measuring should beat its own inputs; the report computes this reference
once per data set (cached beside the report) and shows it as one more row, run ``raw pixels
(<data set>)`` with layer ``pixels``. Data sets larger than ``max_values`` floats per split use a
seeded random subset of that many values' worth of images (recorded in the run name).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

PIXELS = "pixels"


def pixel_features(dataset, max_rows: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, C*H*W) float32 images of ``dataset`` (its evaluation transform applied) and their labels;
    a seeded subset of ``max_rows`` images when the data set is larger."""
    indices = np.arange(len(dataset))
    if max_rows is not None and len(indices) > max_rows:
        indices = np.sort(np.random.default_rng(seed).choice(indices, size=max_rows, replace=False))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices.tolist()), batch_size=512)
    features, labels = [], []
    for images, targets in loader:
        features.append(images.flatten(1).numpy().astype(np.float32, copy=False))
        labels.append(np.asarray(targets))
    return np.concatenate(features), np.concatenate(labels).astype(np.int64)


def pixel_reference(name: str, data: dict, cache: Path, *, max_values: int = 50_000_000,
                    **overrides) -> pd.DataFrame:
    """The tidy metrics of the raw pixels of data set ``name`` (``data``: {"train": ..., "test": ...})."""
    from ..metrics import evaluate_arrays

    sample, _ = data["test"][0]
    per_image = int(np.prod(tuple(sample.shape)))
    max_rows = max(1, max_values // per_image)
    X_train, y_train = pixel_features(data["train"], max_rows)
    X_test, y_test = pixel_features(data["test"], max_rows)
    subset = len(X_train) < len(data["train"]) or len(X_test) < len(data["test"])
    run = f"raw pixels ({name}{', subset' if subset else ''})"
    cache.parent.mkdir(parents=True, exist_ok=True)
    return evaluate_arrays(X_train, y_train, X_test, y_test, layer=PIXELS, run=run, method=PIXELS, epoch=0,
                           cache=cache, **overrides)
