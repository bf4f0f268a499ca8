"""The retraining loop (paper section 5.3.2): SGD steps on the machine the search shares (DDP, mixed
precision, seeded resumable loaders, checkpoints with exact resume), and a hard stop on a non-finite loss."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from nas_core.engine.checkpoint import CHECKPOINT_NAME, Checkpoint
from nas_core.engine.distributed import DistInfo, all_reduce_mean, unwrap, wrap_ddp
from nas_core.engine.precision import MixedPrecision
from nas_core.engine.schedules import Schedule
from nas_core.engine.seeding import EpochBatchSampler


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is left untouched."""


@dataclass(frozen=True)
class TrainConfig:
    """How `train` runs, beside what it trains (built from a stage's settings by
    `nas_core.train.stages.train_config`).

    Args:
        checkpoint_dir: `last.pt` there is written atomically after every epoch and resumed from.
        fingerprint: identifies the run's configuration (any JSON value); a checkpoint with another one is
            not resumed, and is overwritten.
        amp: float16 autocast and loss scaling on CUDA (ignored on CPU, where it would only be slower).
        checkpoint_every: also checkpoint every this many batches (needs a `make_train_loader` loader).
        name: the run's name in the log lines.
    """

    epochs: int
    checkpoint_dir: str | Path
    fingerprint: Any = ""
    amp: bool = False
    grad_clip: float | None = None
    checkpoint_every: int = 0
    log_every: int = 10
    name: str = "train"


@dataclass
class TrainState:
    """Where a run is (the next batch to train) and what it has recorded: what its checkpoint adds to the
    modules and generators."""

    epoch: int = 0
    batch: int = 0
    history: list[dict] = field(default_factory=list)
    loss_sum: float = 0.0  # the running epoch's sums so far
    steps: int = 0
    images: int = 0


@dataclass
class TrainResult:
    history: list[dict]
    checkpoint: Path
    resumed_from: tuple[int, int] | None  # (epoch, batch) the run continued from, None for a fresh start


def train_one_epoch(model: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer, loader: DataLoader,
                    schedule: Schedule, precision: MixedPrecision, state: TrainState, config: TrainConfig,
                    info: DistInfo, on_step: Callable[[int, float], None], log: Callable[[str], None]) -> float:
    """Train epoch `state.epoch` from batch `state.batch` on, counting into `state`; `on_step(batch, loss)`
    after every step. Returns the last learning rate."""
    model.train()
    steps, lr = len(loader), 0.0
    for batch, (images, targets) in enumerate(loader, start=state.batch):
        lr = _set_lr(optimizer, schedule.factor(state.epoch + batch / steps))
        images = images.to(info.device, non_blocking=True)
        targets = targets.to(info.device, non_blocking=True)
        with precision.autocast():
            loss = loss_fn(model(images), targets)
        value = all_reduce_mean(loss.detach().float(), info).item()  # every rank stops together on NaN
        if not np.isfinite(value):
            raise NonFiniteLossError(f"loss is {value} at epoch {state.epoch + 1}, batch {batch + 1}")
        precision.backward_step(loss, [optimizer], grad_clip=config.grad_clip, parameters=model.parameters())
        state.batch, state.loss_sum, state.steps = batch + 1, state.loss_sum + value, state.steps + 1
        state.images += images.shape[0] * info.world_size
        on_step(batch, value)
        if info.is_main and (state.batch % config.log_every == 0 or state.batch == steps):
            log(f"[{config.name}] epoch {state.epoch + 1}/{config.epochs} batch {state.batch}/{steps} "
                f"loss {value:.4f} lr {lr:.3g}")
    return lr


def train(model: nn.Module, loss_fn: Callable, train_loader: DataLoader, optimizer: torch.optim.Optimizer,
          schedule: Schedule, config: TrainConfig, *, dist_info: DistInfo | None = None,
          on_epoch_end: Callable[[int, dict, nn.Module], dict | None] | None = None,
          step_hook: Callable[[int, int, float], None] | None = None,
          log: Callable[[str], None] = print) -> TrainResult:
    """Train `model` for `config.epochs` epochs, resuming from `config.checkpoint_dir/last.pt` when it
    matches `config.fingerprint`.

    Args:
        schedule: multiplies each param group's initial lr, evaluated at the fractional epoch every step.
        on_epoch_end: called on rank 0 as (epoch, metrics, model) after each epoch; a returned dict (e.g.
            validation scores) joins the epoch's metrics, which then go into the checkpoint.
        step_hook: called as (epoch, batch, loss) after every step; tests raise from it to kill a run.
    Returns:
        the per-epoch metrics (from the start of the run, resumed epochs included) and the checkpoint path.
    """
    info = dist_info or DistInfo(device=next(model.parameters()).device)
    model = wrap_ddp(model.to(info.device), info)
    sampler = train_loader.batch_sampler
    if config.checkpoint_every and not isinstance(sampler, EpochBatchSampler):
        raise ValueError("checkpoint_every: mid-epoch checkpoints need a loader from make_train_loader")
    precision = MixedPrecision(info.device, config.amp)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    ckpt = Checkpoint(Path(config.checkpoint_dir) / CHECKPOINT_NAME, config.fingerprint, info, name=config.name,
                      log=log)
    parts = {"model": unwrap(model), "optimizers": {"optimizer": optimizer}, "precision": precision,
             "loaders": [train_loader]}
    state, resumed_from, payload = TrainState(), None, ckpt.load()
    if payload is not None:
        state = ckpt.restore(payload, TrainState, **parts)
        resumed_from = (state.epoch, state.batch)
        log(f"[{config.name}] resuming from {ckpt.path} at epoch {state.epoch + 1}, batch {state.batch}")

    def on_step(batch: int, value: float) -> None:
        if config.checkpoint_every and state.batch % config.checkpoint_every == 0 and state.batch < len(sampler):
            ckpt.save(state, **parts)
        if step_hook is not None:
            step_hook(state.epoch, batch, value)

    while state.epoch < config.epochs:
        if isinstance(sampler, EpochBatchSampler):
            sampler.set_epoch(state.epoch, state.batch)
        tic = time.perf_counter()
        try:
            lr = train_one_epoch(model, loss_fn, optimizer, train_loader, schedule, precision, state, config, info,
                                 on_step, log)
        except NonFiniteLossError as e:
            raise NonFiniteLossError(
                f"[{config.name}] {e}; stopped without saving, the last good checkpoint {ckpt.path} is kept"
                + ("" if ckpt.path.is_file() else " (none was written yet)")) from None
        metrics = _epoch_metrics(state, lr, time.perf_counter() - tic)
        if on_epoch_end is not None and info.is_main:
            metrics.update(on_epoch_end(state.epoch, metrics, parts["model"]) or {})
        state = TrainState(state.epoch + 1, 0, [*state.history, metrics])
        if info.is_main:
            shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "epoch" and isinstance(v, float))
            log(f"[{config.name}] epoch {state.epoch}/{config.epochs} done: {shown}")
        ckpt.save(state, **parts)
    return TrainResult(state.history, ckpt.path, resumed_from)


def _epoch_metrics(state: TrainState, lr: float, seconds: float) -> dict:
    return {"epoch": state.epoch + 1, "loss": state.loss_sum / max(1, state.steps), "lr": lr,
            "images_per_s": state.images / max(seconds, 1e-9), "seconds": seconds}


def _set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    return optimizer.param_groups[0]["lr"]
