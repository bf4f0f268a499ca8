"""Data of the supernet search (paper section 5.3.1): resumable loaders, whose batch order and
augmentations are pure functions of (seed, epoch, image) (`nas_core.engine.training`'s), and FBNet's split of
the training set into a weight part and a theta part."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from nas_core.engine.training import DistInfo, make_train_loader


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, with no correlation between neighbouring tuples."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def search_loader(dataset: Dataset, batch_size: int, seed: int = 0, num_workers: int = 0, rank: int = 0,
                  world_size: int = 1, device: torch.device | str = "cpu") -> DataLoader:
    """A loader that `run_search` replays from any batch: `batch_sampler.set_epoch(epoch, start_batch)`
    picks the epoch's seeded permutation, this rank's shard, and skips the batches already done."""
    info = DistInfo(rank, world_size, 0, torch.device(device))
    return make_train_loader(dataset, batch_size, seed, num_workers, info)


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
