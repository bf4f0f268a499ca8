"""Replayable data order for the supernet search (paper section 5.3.1): the batch order and every
augmentation are pure functions of (seed, epoch, image), so a resumed search sees exactly the
batches an uninterrupted one would, and each DDP rank reads its own share."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, with no correlation between neighbouring tuples."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class ReplaySampler(Sampler):
    """Yields (epoch, index) keys of one rank's share of a seeded per-epoch permutation.

    `set_epoch(epoch, start)` picks the permutation and skips its first `start` keys (the images
    already consumed before an interruption). The tail that does not divide among the ranks is
    dropped so that every rank runs the same number of steps.
    """

    def __init__(self, num_items: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.num_items, self.seed, self.shuffle = num_items, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.num_items // self.world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
            order = torch.randperm(self.num_items, generator=g)
        else:
            order = torch.arange(self.num_items)
        mine = order[: len(self) * self.world_size][self.rank:: self.world_size].tolist()
        return iter([(self.epoch, i) for i in mine[self.start:]])


class KeyedDataset(Dataset):
    """Reads `dataset[index]` for a key (epoch, index) with torch's RNG seeded by (seed, epoch,
    index), so the random crop/scale/flip of a transform that draws from torch's global generator
    depends on nothing else (not on workers, not on what ran before); the caller's RNG is restored."""

    def __init__(self, dataset: Dataset, seed: int = 0):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, epoch, index))
            return self.dataset[index]


def search_loader(dataset: Dataset, batch_size: int, seed: int = 0, shuffle: bool = True, num_workers: int = 0,
                  rank: int = 0, world_size: int = 1, pin_memory: bool = False) -> DataLoader:
    """A DataLoader whose order `run_search` can replay from any step (see ReplaySampler)."""
    sampler = ReplaySampler(len(dataset), seed, shuffle, rank, world_size)
    if len(sampler) < batch_size:
        raise ValueError(f"{len(dataset)} images over {world_size} rank(s) give fewer than one batch of {batch_size}")
    return DataLoader(KeyedDataset(dataset, seed), batch_size=batch_size, sampler=sampler, drop_last=True,
                      num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0)


def split_indices(num_items: int, fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """FBNet's split of the training set: a seeded `fraction` for the weights, the rest for theta."""
    if not 0 < fraction < 1:
        raise ValueError(f"split fraction must be in (0, 1), got {fraction}")
    order = torch.randperm(num_items, generator=torch.Generator().manual_seed(derive_seed(seed, 80))).tolist()
    cut = int(round(num_items * fraction))
    if cut == 0 or cut == num_items:
        raise ValueError(f"a {fraction:.0%} split of {num_items} images leaves one side empty")
    return sorted(order[:cut]), sorted(order[cut:])


def split_dataset(dataset: Dataset, fraction: float, seed: int = 0) -> tuple[Subset, Subset]:
    weights, theta = split_indices(len(dataset), fraction, seed)
    return Subset(dataset, weights), Subset(dataset, theta)

