"""Data of the supernet search (paper section 5.3.1): resumable loaders, whose batch order and
augmentations are pure functions of (seed, epoch, image) (`nas_core.engine.seeding`'s), and FBNet's split of
the training set into a weight part and a theta part."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from nas_core.engine.distributed import DistInfo
from nas_core.engine.seeding import derive_seed, make_train_loader


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
