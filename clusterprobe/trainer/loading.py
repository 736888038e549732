"""Training data: a reproducible two-view data set and its loader.

Reproducibility does not depend on the number of workers, on persistent workers or on resuming:
:class:`EpochSampler` (in the main process) yields ``(index, seed)`` pairs, the order being a
seeded permutation per epoch (sharded over ranks like ``DistributedSampler``), and
:class:`SeededViews` seeds torch's generator with the pair's seed before augmenting that sample.
So sample i of epoch e always gets the same views.

The loader keeps a GPU busy with worker processes, pinned memory and persistent workers; on the
CPU the same code runs with small defaults (see :func:`loader_settings`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant to spread seeds


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Deterministic 63-bit seed for (run seed, epoch, sample index)."""
    value = (seed * _MIX + (epoch + 1) * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) % (1 << 64)
    value ^= value >> 31
    return value % (1 << 63)


class SeededViews(Dataset):
    """Wraps a data set of PIL images; item ``(index, seed)`` -> (views, label).

    ``transform`` is applied under ``torch.manual_seed(seed)``; in the main process the global
    generator's state is saved and restored around it, so loading never disturbs training RNG.
    """

    def __init__(self, base, transform: Callable, indices=None):
        self.base = base
        self.transform = transform
        self.indices = None if indices is None else [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.base) if self.indices is None else len(self.indices)

    def __getitem__(self, item):
        position, seed = item
        index = position if self.indices is None else self.indices[position]
        image, label = self.base[index]
        if get_worker_info() is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                views = self.transform(image)
        else:
            torch.manual_seed(seed)
            views = self.transform(image)
        return views, label


class EpochSampler(Sampler):
    """Seeded per-epoch permutation, this rank's share, as ``(position, seed)`` pairs.

    ``len(self)`` is the number of samples this rank yields; the permutation is cut to a multiple
    of ``world_size`` so every rank gets the same count. Call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.size = size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size // self.world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -1))
        order = torch.randperm(self.size, generator=generator).tolist()
        order = order[: len(self) * self.world_size][self.rank :: self.world_size]
        for position in order:
            yield position, sample_seed(self.seed, self.epoch, position)


def collate_views(batch):
    """[(views, label), ...] -> ([view_0 (B,C,H,W), view_1 ...], labels (B,))."""
    views, labels = zip(*batch)
    stacked = [torch.stack([v[i] for v in views]) for i in range(len(views[0]))]
    return stacked, torch.as_tensor(labels, dtype=torch.int64)


@dataclass(frozen=True)
class LoaderSettings:
    num_workers: int
    pin_memory: bool
    persistent_workers: bool
    prefetch_factor: int | None


def loader_settings(device: torch.device, num_workers: int | None = None, pin_memory: bool | None = None,
                    persistent_workers: bool | None = None, local_world_size: int = 1) -> LoaderSettings:
    """Automatic loader settings: on a GPU up to 8 workers per process (CPU cores shared among
    local processes), pinned memory and persistent workers; on the CPU 0 workers (the cores are
    busy computing), no pinning."""
    cores = os.cpu_count() or 1
    if num_workers is None:
        num_workers = min(8, max(1, cores // max(1, local_world_size) - 1)) if device.type == "cuda" else 0
    if pin_memory is None:
        pin_memory = device.type == "cuda"
    if persistent_workers is None:
        persistent_workers = num_workers > 0
    return LoaderSettings(num_workers, bool(pin_memory), bool(persistent_workers and num_workers > 0),
                          4 if num_workers > 0 else None)


def build_loader(dataset: SeededViews, sampler: EpochSampler, batch_size: int, settings: LoaderSettings) -> DataLoader:
    """A DataLoader over ``dataset`` drawing from ``sampler``; the last incomplete batch is dropped."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=settings.num_workers,
        pin_memory=settings.pin_memory,
        persistent_workers=settings.persistent_workers,
        prefetch_factor=settings.prefetch_factor,
        collate_fn=collate_views,
    )


def subset_indices(size: int, limit: int | None, seed: int) -> list[int] | None:
    """The first ``limit`` positions of a seeded permutation of ``range(size)`` (sorted), or None."""
    if limit is None or limit >= size:
        return None
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(size, generator=generator)[:limit].tolist())


# ---------------------------------------------------------------------------------------------
# batched views on the training device
def images_as_uint8(base, indices=None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The PIL images of ``base`` (or its ``indices``) as one uint8 tensor (N, C, H, W) with their
    labels, or None when the images are not all of one size (they then need the PIL loader)."""
    import numpy as np

    positions = range(len(base)) if indices is None else indices
    arrays, labels = [], []
    for index in positions:
        image, label = base[index]
        array = np.asarray(image, dtype=np.uint8)
        if array.ndim == 2:
            array = array[:, :, None]
        if arrays and array.shape != arrays[0].shape:
            return None
        arrays.append(array)
        labels.append(int(label))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(labels, dtype=torch.int64)


class DeviceViewLoader:
    """Batches of views made on the training device from a uint8 copy of the data set.

    Iterating yields ``([view_0, view_1, ...], labels)`` like the PIL DataLoader, from the same
    :class:`EpochSampler` (order and sharding); each batch's random parameters come from a
    generator seeded by (run seed, epoch, rank, batch number), so resuming reproduces them.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, views, sampler: EpochSampler,
                 batch_size: int, seed: int):
        self.images, self.labels, self.views = images, labels, views
        self.sampler, self.batch_size, self.seed = sampler, int(batch_size), int(seed)

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self):
        order = torch.tensor([position for position, _ in self.sampler], dtype=torch.int64)
        for batch in range(len(self)):
            rows = order[batch * self.batch_size:(batch + 1) * self.batch_size]
            generator = torch.Generator().manual_seed(
                sample_seed(self.seed, self.sampler.epoch, (1 << 40) + self.sampler.rank * (1 << 32) + batch))
            rows_on_device = rows.to(self.images.device, non_blocking=True)  # no wait (see batch_views.to_device)
            images = self.images.index_select(0, rows_on_device)
            yield self.views(images, generator), self.labels.index_select(0, rows_on_device)
