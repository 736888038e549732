"""A cheap online monitor: k-nearest-neighbour accuracy of the encoder's H.

Follows the reference evaluation protocol (specification): frozen features of un-augmented
images (the data set's evaluation transform), a bank from the train split predicting a held-out
query set (the test split). The monitor only encodes the images; the classification is
:func:`clusterprobe.metrics.knn_accuracy` with ``protocol="majority-euclidean"`` (Euclidean
distance on raw H, k = 5 by default, one vote per neighbour, ties to the smallest class index
as in scikit-learn), the same kNN the metrics report.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from ..data import collate_images, load_dataset, loader_batches


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
        for images, targets in loader_batches(loader):
            features.append(encoder(images.to(device, non_blocking=True)).float().cpu())
            labels.append(targets)
    finally:
        encoder.train(was_training)
    return torch.cat(features), torch.cat(labels)


def monitor_accuracy(encoder: nn.Module, bank_set, query_set, device: torch.device, k: int = 5,
                     batch_size: int = 256) -> float:
    """Top-1 5-NN accuracy (0-1) of ``encoder``'s features: ``bank_set`` -> ``query_set``.

    Encodes both sets (see :func:`encode_dataset`) and classifies with
    :func:`clusterprobe.metrics.knn_accuracy` (``majority-euclidean``).
    """
    from ..metrics import knn_accuracy  # the metrics package (pandas, FAISS) loads only when monitoring

    bank, bank_labels = encode_dataset(encoder, bank_set, device, batch_size)
    queries, query_labels = encode_dataset(encoder, query_set, device, batch_size)
    result = knn_accuracy(bank.numpy(), bank_labels.numpy(), queries.numpy(), query_labels.numpy(),
                          protocol="majority-euclidean", k=k, device=str(device))
    return result.top1


class KnnMonitor:
    """The trainer's monitor: :func:`monitor_accuracy` of an encoder, train bank -> test queries.

    The bank and queries (seeded subsets of ``bank_size`` and ``query_size`` images of the
    evaluation-transformed train and test splits) are loaded on the first call.
    """

    def __init__(self, dataset: str, data_root, image_size: int | None, bank_size: int | None,
                 query_size: int | None, seed: int = 0, k: int = 5):
        self.dataset, self.data_root, self.image_size = dataset, data_root, image_size
        self.bank_size, self.query_size, self.seed, self.k = bank_size, query_size, seed, k
        self._sets = None

    def __call__(self, encoder: nn.Module, device: torch.device) -> float:
        if self._sets is None:
            bank = load_dataset(self.dataset, self.data_root, "train", transform="eval", image_size=self.image_size)
            queries = load_dataset(self.dataset, self.data_root, "test", transform="eval", image_size=self.image_size)
            self._sets = limited(bank, self.bank_size, self.seed), limited(queries, self.query_size, self.seed)
        return monitor_accuracy(encoder, *self._sets, device, k=self.k)


def limited(dataset, size: int | None, seed: int = 0):
    """A seeded random subset of ``size`` samples (the whole set when size is None or larger)."""
    if size is None or size >= len(dataset):
        return dataset
    generator = torch.Generator().manual_seed(seed)
    return Subset(dataset, sorted(torch.randperm(len(dataset), generator=generator)[:size].tolist()))
