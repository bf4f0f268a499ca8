"""The training engine of the retraining stages (paper section 5.3.2): SGD steps with mixed precision
on GPU, DDP (+ SyncBatchNorm on GPU) under torchrun, atomic checkpoints with exact resume, and a hard
stop on a non-finite loss."""
from __future__ import annotations

import contextlib
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from nas_core.engine.schedules import Schedule
from nas_core.io import atomic_torch_save

CHECKPOINT_NAME = "last.pt"
CHECKPOINT_FORMAT = 1
_LOADER_STREAM = 0x5EED  # keys the loader generator's seed apart from the shuffles' (seed, epoch)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is left untouched."""


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join torchrun's process group when WORLD_SIZE > 1 (nccl on GPU, gloo on CPU); else one process."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device: expected auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was requested but no GPU is visible")
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return DistInfo(device=torch.device("cuda" if cuda else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank,
                    torch.device(f"cuda:{local_rank}" if cuda else "cpu"))


def _mix(*keys: int) -> int:
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
            torch.manual_seed(_mix(self.seed, epoch, index))
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
        g = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
        order = torch.randperm(self.size, generator=g) if self.shuffle else torch.arange(self.size)
        shard = order[self.rank::self.world_size][: self.per_rank].tolist()
        for b in range(self.start, len(self)):
            yield [(self.epoch, i) for i in shard[b * self.batch_size:(b + 1) * self.batch_size]]


def make_train_loader(dataset: Dataset, batch_size: int, seed: int = 0, num_workers: int = 0,
                      dist_info: DistInfo | None = None, drop_last: bool = True) -> DataLoader:
    """A shuffling loader that `train` can resume at any batch (see `EpochBatchSampler`).

    It has a generator of its own: each epoch's iterator draws its worker seed from it, where the
    global generator would be shifted by one draw on resume and every later dropout mask with it."""
    info = dist_info or DistInfo()
    sampler = EpochBatchSampler(len(dataset), batch_size, seed, True, drop_last, info.rank, info.world_size)
    generator = torch.Generator().manual_seed(_mix(seed, info.rank, _LOADER_STREAM))
    return DataLoader(SeededDataset(dataset, seed), batch_sampler=sampler, num_workers=num_workers,
                      pin_memory=info.device.type == "cuda", generator=generator)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by `train` (our own file: full unpickling of RNG states is needed)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such checkpoint") from None
    except Exception as e:  # a truncated or foreign file raises several types
        raise ValueError(f"{path}: not a readable checkpoint ({e})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a training checkpoint of format {CHECKPOINT_FORMAT}")
    return state


@dataclass
class TrainResult:
    history: list[dict]
    checkpoint: Path
    resumed_from: tuple[int, int] | None  # (epoch, batch) the run continued from, None for a fresh start


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def train(model: nn.Module, loss_fn: Callable, train_loader: DataLoader, optimizer: torch.optim.Optimizer,
          schedule: Schedule, epochs: int, checkpoint_dir: str | Path, *,
          on_epoch_end: Callable[[int, dict, nn.Module], dict | None] | None = None, amp: bool = False,
          grad_clip: float | None = None, dist_info: DistInfo | None = None, fingerprint: str = "",
          checkpoint_every: int = 0, step_hook: Callable[[int, int, float], None] | None = None,
          log_every: int = 10, name: str = "train", log: Callable[[str], None] = print) -> TrainResult:
    """Train `model` for `epochs` epochs, resuming from `checkpoint_dir/last.pt` when it matches `fingerprint`.

    Args:
        schedule: multiplies each param group's initial lr, evaluated at the fractional epoch every step.
        on_epoch_end: called on rank 0 as (epoch, metrics, model) after each epoch; a returned dict (e.g.
            validation scores) joins the epoch's metrics, which then go into the checkpoint.
        amp: float16 autocast and loss scaling on CUDA (ignored on CPU, where it would only be slower).
        fingerprint: identifies the run's configuration; a checkpoint with another one is not resumed.
        checkpoint_every: also checkpoint every this many batches (needs a `make_train_loader` loader).
        step_hook: called as (epoch, batch, loss) after every step; tests raise from it to kill a run.
    Returns:
        the per-epoch metrics (from the start of the run, resumed epochs included) and the checkpoint path.
    """
    info = dist_info or DistInfo(device=next(model.parameters()).device)
    cuda = info.device.type == "cuda"
    model.to(info.device)
    if info.world_size > 1:
        if cuda:  # SyncBatchNorm needs GPU modules; on CPU each process keeps its own batch statistics
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = nn.parallel.DistributedDataParallel(model, device_ids=[info.local_rank] if cuda else None)
    raw = unwrap(model)
    sampler = train_loader.batch_sampler
    resumable = isinstance(sampler, EpochBatchSampler)
    if checkpoint_every and not resumable:
        raise ValueError("checkpoint_every: mid-epoch checkpoints need a loader from make_train_loader")
    use_amp = amp and cuda
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])

    path = Path(checkpoint_dir) / CHECKPOINT_NAME
    start_epoch, start_batch, history, resumed_from = 0, 0, [], None
    partial = {"loss_sum": 0.0, "steps": 0, "images": 0}
    if path.is_file():
        state = load_checkpoint(path)
        if state["fingerprint"] != fingerprint:
            log(f"[{name}] {path} belongs to another configuration; starting afresh")
        else:
            raw.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            _set_rng_state(state["rng"])
            if state["loader_generator"] is not None and train_loader.generator is not None:
                train_loader.generator.set_state(state["loader_generator"])
            start_epoch, start_batch, history = state["epoch"], state["batch"], state["history"]
            partial = state["partial"]
            resumed_from = (start_epoch, start_batch)
            log(f"[{name}] resuming from {path} at epoch {start_epoch + 1}, batch {start_batch}")

    def save(epoch: int, batch: int) -> None:
        if info.is_main:
            atomic_torch_save(path, {
                "format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "epoch": epoch, "batch": batch,
                "model": raw.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "rng": _rng_state(), "history": history, "partial": dict(partial),
                "loader_generator": train_loader.generator.get_state() if train_loader.generator is not None else None,
            })
        if info.world_size > 1:
            dist.barrier()

    steps_per_epoch = len(train_loader)
    for epoch in range(start_epoch, epochs):
        first = start_batch if epoch == start_epoch else 0
        if resumable:
            sampler.set_epoch(epoch, first)
        model.train()
        tic, lr = time.perf_counter(), 0.0
        for batch, (images, targets) in enumerate(train_loader, start=first):
            lr = _set_lr(optimizer, schedule.factor(epoch + batch / steps_per_epoch))
            images = images.to(info.device, non_blocking=True)
            targets = targets.to(info.device, non_blocking=True)
            with autocast(info.device, use_amp):
                loss = loss_fn(model(images), targets)
            value = loss.detach().float()
            if info.world_size > 1:  # every rank sees the same mean, so all stop together on NaN
                dist.all_reduce(value)
                value /= info.world_size
            value = value.item()
            if not np.isfinite(value):
                raise NonFiniteLossError(
                    f"[{name}] loss is {value} at epoch {epoch + 1}, batch {batch + 1}; stopped without saving, "
                    f"the last good checkpoint {path} is kept" + ("" if path.is_file() else " (none was written yet)"))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
            partial["loss_sum"] += value
            partial["steps"] += 1
            partial["images"] += images.shape[0] * info.world_size
            if checkpoint_every and (batch + 1) % checkpoint_every == 0 and batch + 1 < steps_per_epoch:
                save(epoch, batch + 1)
            if step_hook is not None:
                step_hook(epoch, batch, value)
            if info.is_main and ((batch + 1) % log_every == 0 or batch + 1 == steps_per_epoch):
                log(f"[{name}] epoch {epoch + 1}/{epochs} batch {batch + 1}/{steps_per_epoch} "
                    f"loss {value:.4f} lr {lr:.3g}")
        seconds = time.perf_counter() - tic
        metrics = {"epoch": epoch + 1, "loss": partial["loss_sum"] / max(1, partial["steps"]), "lr": lr,
                   "images_per_s": partial["images"] / max(seconds, 1e-9), "seconds": seconds}
        if on_epoch_end is not None and info.is_main:
            metrics.update(on_epoch_end(epoch, metrics, raw) or {})
        history.append(metrics)
        partial = {"loss_sum": 0.0, "steps": 0, "images": 0}
        if info.is_main:
            shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "epoch" and isinstance(v, float))
            log(f"[{name}] epoch {epoch + 1}/{epochs} done: {shown}")
        save(epoch + 1, 0)
    return TrainResult(history, path, resumed_from)


def autocast(device: torch.device, enabled: bool):
    """float16 autocast on CUDA when `enabled`; a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    return optimizer.param_groups[0]["lr"]
