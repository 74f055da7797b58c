"""Data plumbing for the trainer: resumable, rank-aware sampling and per-sample seeding.

Augmentation randomness is made a pure function of ``(seed, epoch, index)``: the sampler yields
``(epoch, index)`` pairs and :class:`SeededDataset` seeds torch's RNG from them around each
``dataset[index]``. Hence the same sample gets the same augmentation whether it is loaded in the
main process or a worker, on any rank, and before or after ``--resume``.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler


class SeededDataset(Dataset):
    """Wraps ``dataset`` so ``self[(epoch, index)]`` == ``dataset[index]`` under a fixed RNG seed."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + index)
            return self.dataset[index]


class EpochSampler(Sampler):
    """DistributedSampler order for one epoch, yielding ``(epoch, index)``, skipping a prefix.

    Args:
        size: dataset length.
        num_replicas / rank: the process group's shape (1 / 0 without DDP).
        skip: samples of this rank's epoch order already consumed (on resume mid-epoch).
    """

    def __init__(self, size: int, seed: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True) -> None:
        self._order = DistributedSampler(range(size), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch = epoch
        self.skip = skip
        self._order.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(self._order)[self.skip :]
        return iter([(self.epoch, index) for index in indices])

    def __len__(self) -> int:
        return len(self._order) - self.skip

    @property
    def samples_per_epoch(self) -> int:
        return len(self._order)
