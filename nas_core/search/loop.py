"""The supernet search (paper sections 4.1-4.3): weights w and architecture logits theta minimise
L = CE + alpha * L_E(theta) (eq. 1, 3), co-optimised on the same batches (the paper) or on FBNet's
alternating 80/20 split; candidates under 0.5% are pruned (section 4.2). Mixed precision on GPU,
DDP under torchrun, and checkpoints from which a killed search resumes exactly."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from nas_core.cost.model import CostModel
from nas_core.data.labels import IGNORE_INDEX
from nas_core.engine.checkpoint import Checkpoint
from nas_core.engine.distributed import DistInfo, all_reduce_sum, current_distributed, wrap_ddp
from nas_core.engine.evaluate import eval_mode, evaluate_segmentation
from nas_core.engine.precision import MixedPrecision
from nas_core.engine.seeding import derive_seed
from nas_core.search.checkpoint import search_fingerprint
from nas_core.search.gumbel import TauSchedule
from nas_core.search.supernet import Supernet, SupernetPath
from nas_core.space.candidates import CANDIDATE_NAMES, NUM_CANDIDATES
from nas_core.space.spaces import Architecture

SKIP = CANDIDATE_NAMES.index("skip")


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """Hyper-parameters of one search, built from params.yaml's `search` section by `search_config`: that section
    (nas_core.config.SearchParams) holds their defaults and checks. `cost_reference` (table units) divides L_E; by
    default it is the expected cost of the searched blocks under uniform p (L_E = 1 at the start), so alpha
    is unit-free: the same alpha is the same trade-off on a MAC or a latency table."""

    epochs: int
    alpha: float
    cost_reference: float | None
    tau: TauSchedule
    hard: bool
    scheme: str  # "joint" or "fbnet"
    warmup_epochs: int
    weight_lr: float
    momentum: float
    weight_decay: float
    theta_lr: float
    theta_weight_decay: float
    prune_threshold: float
    checkpoint_every: int  # steps; 0: at the end of every epoch only
    amp: bool
    seed: int
    log_every: int

    def to_dict(self) -> dict:
        return asdict(self)


def search_config(params) -> SearchConfig:
    """The adapter from params.yaml's `search` section (nas_core.config.SearchParams) to the search's config."""
    return SearchConfig(
        epochs=params.epochs, alpha=params.alpha, cost_reference=params.cost_reference,
        tau=TauSchedule(params.tau_schedule, params.tau_start, params.tau_end, params.tau_decay), hard=params.hard,
        scheme=params.scheme, warmup_epochs=params.warmup_epochs, weight_lr=params.weight_lr,
        momentum=params.momentum, weight_decay=params.weight_decay, theta_lr=params.theta_lr,
        theta_weight_decay=params.theta_weight_decay, prune_threshold=params.prune_threshold,
        checkpoint_every=params.checkpoint_every, amp=params.amp, seed=params.seed, log_every=params.log_every)


@dataclass
class SearchResult:
    curves: pd.DataFrame  # one row of metrics per epoch
    history: pd.DataFrame  # theta per (epoch, block, candidate); epoch 0 is the start
    pruning_log: pd.DataFrame  # (epoch, block, candidate, probability) of every removal
    architecture: Architecture  # the most likely candidate of every block
    resumed_from: dict | None  # the checkpoint position the run continued from
    checkpoint: Path  # this configuration's checkpoint file (its folder is named by the fingerprint)


def resource_loss(probs: torch.Tensor, cost: torch.Tensor, reference: float,
                  pairwise: torch.Tensor | None = None) -> torch.Tensor:
    """L_E(theta) = sum_i sum_j p(i, j | theta) C(i, j) / reference (eq. 3); with a latency model's
    neighbour terms P (num_blocks - 1, 13, 13) also + sum_i p_i^T P_i p_{i+1} (its exact expectation:
    the blocks are drawn independently)."""
    expected = (probs * cost).sum()
    if pairwise is not None:
        expected = expected + torch.einsum("ia,iab,ib->", probs[:-1], pairwise, probs[1:])
    return expected / reference


def distribution_stats(probs: torch.Tensor, cost: np.ndarray, fixed_cost: float,
                       pairwise: np.ndarray | None = None) -> dict[str, float]:
    """Expected and argmax cost, mean entropy (nats), live candidates and the mass on `skip`."""
    p = probs.detach().double().cpu().numpy()
    entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)  # pruned candidates add 0, not nan
    model = CostModel("", "", fixed_cost, cost, pairwise)  # the expectation and pricing of nas_core.cost.model
    return {"expected_cost": model.expected(p), "argmax_cost": float(model.predict_indices(p.argmax(axis=1))[0]),
            "mean_entropy": float(entropy.mean()), "live_candidates": int((p > 0).sum()),
            "skip_share": float(p[:, SKIP].mean())}


def _plan(config: SearchConfig, train_loader, arch_loader) -> list[list[tuple[str, object, bool, bool]]]:
    """Per epoch, its phases: (name, loader, update weights, update theta)."""
    if config.scheme == "fbnet" and arch_loader is None:
        raise ValueError("the fbnet scheme needs arch_loader (the 20% split that trains theta)")
    plan = []
    for epoch in range(config.epochs):
        if epoch < config.warmup_epochs:
            plan.append([("warmup", train_loader, True, False)])
        elif config.scheme == "joint":
            plan.append([("joint", train_loader, True, True)])
        else:
            plan.append([("weights", train_loader, True, False), ("theta", arch_loader, False, True)])
    return plan


def _weight_optimizer(supernet: Supernet, config: SearchConfig, old: torch.optim.Optimizer | None = None):
    """SGD over the live weights; after pruning, the survivors keep their momentum."""
    params = supernet.weight_parameters()
    opt = torch.optim.SGD(params, lr=config.weight_lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if old is not None:
        opt.state.update({p: old.state[p] for p in params if p in old.state})
    return opt


@dataclass
class SearchState:
    """Where a search is (epoch, phase, next batch, global step) and what it has recorded: what its
    checkpoint holds beside the modules and optimizers."""

    epoch: int = 0
    phase: int = 0
    batch: int = 0
    step: int = 0
    tau: float = 0.0
    sums: torch.Tensor = field(default_factory=lambda: torch.zeros(4, dtype=torch.float64))  # ce, L_E, loss, batches
    curves: list[dict] = field(default_factory=list)
    pruning: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)

    def position(self) -> dict:
        return {"epoch": self.epoch, "phase": self.phase, "batch": self.batch, "step": self.step}


@dataclass(frozen=True)
class SearchLoss:
    """L = CE + alpha * L_E(theta) (eq. 1, 3), the cross-entropy averaged over the labelled pixels."""

    supernet: Supernet
    cost: torch.Tensor  # C on the supernet's device
    reference: float
    alpha: float
    pairwise: torch.Tensor | None = None  # a latency model's neighbour terms, or None (additive)

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(L, CE, L_E)"""
        valid = (y != IGNORE_INDEX).sum().clamp(min=1)
        ce = F.cross_entropy(logits.float(), y, ignore_index=IGNORE_INDEX, reduction="sum") / valid
        resource = resource_loss(self.supernet.probabilities(), self.cost, self.reference, self.pairwise)
        return ce + self.alpha * resource, ce, resource


def search_loss(supernet: Supernet, cost: np.ndarray, config: SearchConfig, device: torch.device,
                pairwise: np.ndarray | None = None) -> SearchLoss:
    """The loss of a search with the cost matrix `cost` (table units, checked here) and a latency
    model's neighbour terms `pairwise` (or None) on `device`."""
    b = len(supernet.blocks)
    if cost.shape != (b, NUM_CANDIDATES):
        raise ValueError(f"cost matrix must be ({b}, {NUM_CANDIDATES}), got shape {cost.shape}")
    if not np.isfinite(cost).all() or (cost < 0).any():
        raise ValueError("cost matrix must be finite and >= 0 (a latency table with missing measurements?)")
    if pairwise is not None and (pairwise.shape != (b - 1, NUM_CANDIDATES, NUM_CANDIDATES)
                                 or not np.isfinite(pairwise).all()):
        raise ValueError(f"pairwise costs must be finite, ({b - 1}, {NUM_CANDIDATES}, {NUM_CANDIDATES}), "
                         f"got shape {pairwise.shape}")
    # the expected variable cost at uniform theta
    reference = config.cost_reference or float(cost.mean(axis=1).sum()) + (
        float(pairwise.mean(axis=(1, 2)).sum()) if pairwise is not None else 0.0)
    if reference <= 0:
        raise ValueError("cost reference is 0: the cost table has no cost to trade off; set cost_reference")
    pair = None if pairwise is None else torch.tensor(pairwise, dtype=torch.float32, device=device)
    return SearchLoss(supernet, torch.tensor(cost, dtype=torch.float32, device=device), reference, config.alpha,
                      pair)


def search_one_epoch(model: nn.Module, phases: list, opt_w: torch.optim.Optimizer, opt_t: torch.optim.Optimizer,
                     precision: MixedPrecision, loss_fn: SearchLoss, state: SearchState, config: SearchConfig,
                     total_steps: int, info: DistInfo, on_step: Callable[[], None], log: Callable[[str], None]) -> None:
    """Epoch `state.epoch` from its phase `state.phase` and batch `state.batch` on (see `_plan`), counting
    into `state`; `on_step()` after every step."""
    generator, rank = torch.Generator(), info.rank
    for index in range(state.phase, len(phases)):
        name, loader, update_w, update_t = phases[index]
        loader.batch_sampler.set_epoch(state.epoch, state.batch)  # skip the batches done before a stop
        tick = time.perf_counter()
        for x, y in loader:
            step = state.step
            tau = config.tau.at(step, total_steps, state.epoch, config.epochs)
            for group in opt_w.param_groups:  # cosine decay of the weights' learning rate
                group["lr"] = config.weight_lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
            generator.manual_seed(derive_seed(config.seed, rank, step))
            x, y = x.to(info.device, non_blocking=True), y.to(info.device, non_blocking=True)
            with precision.autocast():
                logits = model(x, tau=tau, generator=generator, hard=config.hard)
            loss, ce, resource = loss_fn(logits, y)
            stepping = [opt for opt, on in ((opt_w, update_w), (opt_t, update_t)) if on]
            precision.backward_step(loss, [opt_w, opt_t], stepping)
            terms = [ce.detach(), resource.detach(), loss.detach(), torch.ones((), device=info.device)]
            state.sums += torch.stack(terms).cpu().double()
            state.batch, state.step, state.tau = state.batch + 1, step + 1, tau
            on_step()
            if rank == 0 and (state.batch % config.log_every == 0 or state.batch == len(loader)):
                log(f"[search] epoch {state.epoch + 1}/{config.epochs} {name} {state.batch}/{len(loader)} "
                    f"step {state.step}/{total_steps} ce {ce.item():.3f} L_E {resource.item():.3f} "
                    f"tau {tau:.2f} ({(time.perf_counter() - tick) / state.batch:.2f} s/step)")
        state.phase, state.batch = index + 1, 0


def run_search(supernet: Supernet, train_loader, cost: np.ndarray, config: SearchConfig,
               checkpoint_dir: str | Path, *, arch_loader=None, fixed_cost: float = 0.0,
               pairwise: np.ndarray | None = None,
               on_epoch_end: Callable[[int, dict], None] | None = None,
               log: Callable[[str], None] = print) -> SearchResult:
    """Search on `supernet` (already on its device) and return the curves and theta history.

    Args:
        train_loader: batches of (image, label) from a `nas_core.search.data.search_loader`, whose batch
            sampler replays any epoch from any batch. For the fbnet scheme, the 80% weight split.
        cost: C, (num_blocks, 13) in table units (`nas_core.cost.macs.cost_matrix`); `fixed_cost` is the
            stem/post-encoder/decoder total, reported in `expected_cost`.
        pairwise: a latency model's neighbour terms (num_blocks - 1, 13, 13), or None (`nas_core.cost.model`).
        checkpoint_dir: `<fingerprint key>/last.pt` there is written atomically every epoch (and
            every `checkpoint_every` steps); a run finding one of its configuration continues it, and
            the checkpoints of other configurations are left alone.
        on_epoch_end: called on rank 0 as (epoch, metrics), epoch counting from 1; on resume the
            finished epochs are replayed to it first.
    Under torch.distributed the supernet is wrapped in DDP (SyncBatchNorm on CUDA); every rank
    must call this with its own shard of the data (`search_loader(rank=, world_size=)`).
    """
    info = current_distributed(next(supernet.parameters()).device)
    cost = np.asarray(cost, dtype=np.float64)
    pairwise = None if pairwise is None else np.asarray(pairwise, dtype=np.float64)
    loss_fn = search_loss(supernet, cost, config, info.device, pairwise)
    plan = _plan(config, train_loader, arch_loader)
    total_steps = sum(len(phase[1]) for epoch in plan for phase in epoch)
    loaders = [loader for loader in (train_loader, arch_loader) if loader is not None]
    if not all(hasattr(loader.batch_sampler, "set_epoch") for loader in loaders):
        raise ValueError("run_search needs resumable loaders (nas_core.search.data.search_loader)")
    data = [(len(loader), loader.batch_sampler.batch_size) for loader in loaders]
    fingerprint = search_fingerprint(config, supernet, cost, fixed_cost, info.world_size, data, pairwise)
    ckpt = Checkpoint.slot(checkpoint_dir, fingerprint, info, name="search", log=log)
    payload = ckpt.load()
    if payload is not None:
        supernet.set_live_mask(payload["live_mask"])  # first: the state holds only the live candidates' modules
    precision = MixedPrecision(info.device, config.amp)
    opt_w = _weight_optimizer(supernet, config)  # over the live candidates
    opt_t = torch.optim.Adam(supernet.arch_parameters(), lr=config.theta_lr, weight_decay=config.theta_weight_decay)

    def parts() -> dict:  # opt_w is replaced after pruning
        return {"model": supernet, "optimizers": {"weights": opt_w, "theta": opt_t}, "precision": precision,
                "loaders": loaders}

    state, resumed = SearchState(tau=config.tau.start, history=theta_rows(supernet, 0)), None
    if payload is not None:
        state = ckpt.restore(payload, SearchState, **parts())
        resumed = state.position()
        if info.is_main:
            log(f"[search] resuming from {ckpt.path}: epoch {state.epoch + 1}, phase {state.phase}, "
                f"batch {state.batch}, step {state.step}")
        if on_epoch_end is not None and info.is_main:  # the finished epochs, replayed
            for row in state.curves:
                on_epoch_end(row["epoch"], row)

    def save() -> None:
        ckpt.save(state, **parts(), live_mask=supernet.live_mask().cpu())

    def on_step() -> None:
        if config.checkpoint_every and state.step % config.checkpoint_every == 0:
            save()

    model = wrap_ddp(supernet, info)
    while state.epoch < config.epochs:
        started = time.perf_counter()
        search_one_epoch(model, plan[state.epoch], opt_w, opt_t, precision, loss_fn, state, config, total_steps,
                         info, on_step, log)
        # section 4.2: every rank holds the same theta, so every rank removes the same candidates
        removed = supernet.prune(config.prune_threshold) if config.prune_threshold > 0 else []
        if removed:
            opt_w = _weight_optimizer(supernet, config, opt_w)
            model = wrap_ddp(supernet, info)
        metrics = _end_epoch(state, supernet, removed, cost, fixed_cost, info, time.perf_counter() - started,
                             pairwise)
        save()
        if info.is_main:
            _log_epoch(metrics, removed, config, log)
            if on_epoch_end is not None:
                on_epoch_end(state.epoch, metrics)

    return SearchResult(
        curves=pd.DataFrame(state.curves),
        history=pd.DataFrame(state.history),
        pruning_log=pd.DataFrame(state.pruning, columns=["epoch", "block", "candidate", "probability"]),
        architecture=supernet.argmax_architecture(), resumed_from=resumed, checkpoint=ckpt.path)


def _end_epoch(state: SearchState, supernet: Supernet, removed: list, cost: np.ndarray, fixed_cost: float,
               info: DistInfo, seconds: float, pairwise: np.ndarray | None = None) -> dict:
    """Close the epoch in `state`: its curve row (losses averaged over every rank's batches), the pruning
    and the theta of its end; returns the row."""
    sums = all_reduce_sum(state.sums.to(info.device), info).cpu()
    epoch = state.epoch + 1
    metrics = {"epoch": epoch, "ce": float(sums[0] / sums[3]), "resource_loss": float(sums[1] / sums[3]),
               "total_loss": float(sums[2] / sums[3]), "tau": state.tau, "fixed_cost": fixed_cost,
               **distribution_stats(supernet.probabilities(), cost, fixed_cost, pairwise),
               "pruned": len(removed), "seconds": seconds}
    state.epoch, state.phase, state.sums = epoch, 0, torch.zeros(4, dtype=torch.float64)
    state.curves.append(metrics)
    state.pruning += [{"epoch": epoch, "block": b, "candidate": n, "probability": p} for b, n, p in removed]
    state.history += theta_rows(supernet, epoch)
    return metrics


def _log_epoch(metrics: dict, removed: list, config: SearchConfig, log: Callable[[str], None]) -> None:
    epoch = metrics["epoch"]
    for b, n, p in removed:
        log(f"[search] epoch {epoch}: pruned block {b} {n} (p = {p:.4f})")
    log(f"[search] epoch {epoch}/{config.epochs} done: ce {metrics['ce']:.3f} expected cost "
        f"{metrics['expected_cost']:.4g} entropy {metrics['mean_entropy']:.3f} live "
        f"{metrics['live_candidates']} skip {metrics['skip_share']:.3f} ({metrics['seconds']:.1f} s)")


def theta_rows(supernet: Supernet, epoch: int) -> list[dict]:
    """One row per (block, candidate): the raw logit, its probability and whether it is live."""
    theta = torch.stack([p.detach().float().cpu() for p in supernet.arch_parameters()])
    probs, live = supernet.probabilities().detach().cpu(), supernet.live_mask().cpu()
    return [{"epoch": epoch, "block": i, "candidate": name, "logit": float(theta[i, j]),
             "probability": float(probs[i, j]), "live": bool(live[i, j])}
            for i in range(theta.shape[0]) for j, name in enumerate(CANDIDATE_NAMES)]


def evaluate_architecture(supernet: Supernet, arch: Architecture, loader, class_names: tuple[str, ...]) -> dict:
    """mIoU of one architecture's path through the supernet (section 5.3.1) on `loader`, whose classes are
    `class_names` (the supernet's)."""
    with eval_mode(supernet):
        return evaluate_segmentation(SupernetPath(supernet, arch), loader, supernet.num_classes,
                                     next(supernet.parameters()).device, class_names=class_names)
