"""Randomness that a killed run can replay (the search and the retraining resume exactly): seeds derived
from integer keys, loaders whose batch order and augmentations are pure functions of (seed, epoch, image),
and the global generators' state, which a checkpoint carries."""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from nas_core.engine.distributed import DistInfo

_LOADER_STREAM = 0x5EED  # keys the loader generator's seed apart from the shuffles' (seed, epoch)


def derive_seed(*keys: int) -> int:
    """A well-spread 63-bit seed from integer keys (nearby keys give unrelated streams)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class SeededDataset(Dataset):
    """Looks samples up by (epoch, index) and draws each one's augmentation from a generator seeded by
    (seed, epoch, index): a sample no longer depends on which worker or which position loads it."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        with torch.random.fork_rng(devices=[]):  # the transforms draw from torch's global generator
            torch.manual_seed(derive_seed(self.seed, epoch, index))
            return self.dataset[index]


class EpochBatchSampler(Sampler):
    """Batches of (epoch, index) keys: a permutation seeded by (seed, epoch), this rank's shard of it, and
    a start batch, so a run resumed at batch k of an epoch sees exactly the batches it would have seen."""

    def __init__(self, size: int, batch_size: int, seed: int = 0, shuffle: bool = True, drop_last: bool = True,
                 rank: int = 0, world_size: int = 1) -> None:
        self.size, self.batch_size, self.seed, self.shuffle = size, batch_size, seed, shuffle
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.per_rank = size // world_size  # equal shards: every rank takes the same number of steps
        if len(self) == 0:
            raise ValueError(f"batch_size: {batch_size} is more than the {self.per_rank} samples per process")
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start = epoch, start_batch

    def __len__(self) -> int:
        full, rest = divmod(self.per_rank, self.batch_size)
        return full + (0 if self.drop_last or rest == 0 else 1)

    def __iter__(self):
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        order = torch.randperm(self.size, generator=g) if self.shuffle else torch.arange(self.size)
        shard = order[self.rank::self.world_size][: self.per_rank].tolist()
        for b in range(self.start, len(self)):
            yield [(self.epoch, i) for i in shard[b * self.batch_size:(b + 1) * self.batch_size]]


def make_train_loader(dataset: Dataset, batch_size: int, seed: int = 0, num_workers: int = 0,
                      dist_info: DistInfo | None = None, drop_last: bool = True) -> DataLoader:
    """A shuffling loader that the search and `train` resume at any batch (see `EpochBatchSampler`).

    It has a generator of its own: each epoch's iterator draws its worker seed from it, where the
    global generator would be shifted by one draw on resume and every later dropout mask with it."""
    info = dist_info or DistInfo()
    sampler = EpochBatchSampler(len(dataset), batch_size, seed, True, drop_last, info.rank, info.world_size)
    generator = torch.Generator().manual_seed(derive_seed(seed, info.rank, _LOADER_STREAM))
    return DataLoader(SeededDataset(dataset, seed), batch_sampler=sampler, num_workers=num_workers,
                      pin_memory=info.device.type == "cuda", generator=generator)


def rng_state() -> dict:
    """The global generators (torch, CUDA, numpy, Python) in types that `torch.load(weights_only=True)` reads."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                      gauss),
            "python": random.getstate(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
