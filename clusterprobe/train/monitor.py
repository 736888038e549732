"""A cheap online monitor: k-nearest-neighbour accuracy of the encoder's H.

Follows the reference evaluation protocol (specification): frozen features of un-augmented
images (the data set's evaluation transform), Euclidean distance on raw H, k = 5, majority vote
(ties go to the nearest neighbour's class among the tied ones), a bank from the train split
predicting a held-out query set (the test split).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from ..data import collate_images


@torch.no_grad()
def encode_dataset(encoder: nn.Module, dataset, device: torch.device, batch_size: int = 256,
                   num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (n, d) float32 on the CPU, labels (n,)) of ``encoder`` in eval mode.

    The encoder's training/eval mode is restored afterwards.
    """
    was_training = encoder.training
    encoder.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_images)
    features, labels = [], []
    try:
        for images, targets in loader:
            features.append(encoder(images.to(device, non_blocking=True)).float().cpu())
            labels.append(targets)
    finally:
        encoder.train(was_training)
    return torch.cat(features), torch.cat(labels)


def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, k: int = 5,
                chunk: int = 1024) -> torch.Tensor:
    """Majority vote of the ``k`` Euclidean nearest bank samples for every query -> labels (q,).

    Ties between classes are broken in favour of the class of the nearest neighbour among them.
    """
    k = min(k, bank.shape[0])
    num_classes = int(bank_labels.max()) + 1
    predictions = []
    for start in range(0, queries.shape[0], chunk):
        q = queries[start:start + chunk]
        distances = torch.cdist(q, bank)
        nearest = distances.topk(k, largest=False).indices  # sorted nearest first
        votes = torch.zeros(q.shape[0], num_classes)
        neighbour_labels = bank_labels[nearest]
        votes.scatter_add_(1, neighbour_labels, torch.ones_like(neighbour_labels, dtype=votes.dtype))
        # tie-break: a tiny bonus decreasing with rank
        bonus = torch.zeros_like(votes)
        rank_bonus = (torch.arange(k, 0, -1, dtype=votes.dtype) * 1e-3).expand(q.shape[0], k)
        bonus.scatter_reduce_(1, neighbour_labels, rank_bonus, reduce="amax")
        predictions.append((votes + bonus).argmax(dim=1))
    return torch.cat(predictions)


def knn_accuracy(encoder: nn.Module, bank_set, query_set, device: torch.device, k: int = 5,
                 batch_size: int = 256) -> float:
    """Top-1 kNN accuracy (0-1) of ``encoder``'s features: bank_set -> query_set."""
    bank, bank_labels = encode_dataset(encoder, bank_set, device, batch_size)
    queries, query_labels = encode_dataset(encoder, query_set, device, batch_size)
    predicted = knn_predict(bank, bank_labels, queries, k)
    return float((predicted == query_labels).float().mean())


def limited(dataset, size: int | None, seed: int = 0):
    """A seeded random subset of ``size`` samples (the whole set when size is None or larger)."""
    if size is None or size >= len(dataset):
        return dataset
    generator = torch.Generator().manual_seed(seed)
    return Subset(dataset, sorted(torch.randperm(len(dataset), generator=generator)[:size].tolist()))
