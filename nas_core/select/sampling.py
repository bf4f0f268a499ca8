"""After the search (paper section 5.3.1): draw distinct architectures from the learned distribution
p(i, j | theta) and estimate each one's mIoU by running its path through the trained supernet."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from nas_core.engine.evaluate import evaluate_segmentation, pad_to_multiple
from nas_core.io import read_parquet
from nas_core.search.supernet import Supernet, SupernetPath, extract_network
from nas_core.space.candidates import CANDIDATE_NAMES, NUM_CANDIDATES
from nas_core.space.spaces import Architecture, get_space

# Draws are made in fixed-size chunks, so the first k architectures of a seed do not depend on how
# many were asked for (sampling 10 gives the first 10 of sampling 200).
_CHUNK = 256


@dataclass(frozen=True)
class Samples:
    """K distinct architectures, the argmax first, then in order of first appearance."""

    architectures: tuple[Architecture, ...]
    log_probs: tuple[float, ...]  # log p(arch) = sum_i log p(i, choice_i)
    draws: int  # categorical draws made (the argmax is included by rule, not drawn)
    duplicates: int  # draws that repeated an architecture already taken, and were redrawn
    support: int  # architectures with non-zero probability (capped at 2**63)
    exhausted: bool  # stopped at max_draws with fewer than requested


def read_probabilities(path: str | Path, num_blocks: int | None = None) -> np.ndarray:
    """p(i, j | theta) as (blocks, 13) from the search's theta.parquet (the last epoch if it has several).

    Accepts one row per (block, candidate) with a `probability` column, or with `logit` (+ `live`),
    as `nas_core.search.loop.theta_rows` writes. Errors name the file.
    """
    path = Path(path)
    df = read_parquet(path, "theta table", " (run the search stage first)")
    missing = {"block", "candidate"} - set(df.columns)
    if missing or not {"probability", "logit"} & set(df.columns):
        raise ValueError(f"{path}: needs columns block, candidate and probability (or logit); has {list(df.columns)}")
    if "epoch" in df.columns:
        df = df[df["epoch"] == df["epoch"].max()]
    unknown = sorted(set(df["candidate"]) - set(CANDIDATE_NAMES))
    if unknown:
        raise ValueError(f"{path}: unknown candidate(s) {unknown}")
    value = "probability" if "probability" in df.columns else "logit"
    if df.duplicated(["block", "candidate"]).any():
        raise ValueError(f"{path}: duplicate (block, candidate) rows")
    table = df.pivot(index="block", columns="candidate", values=value).reindex(columns=list(CANDIDATE_NAMES))
    blocks = table.index.tolist()
    if blocks != list(range(len(blocks))) or table.isna().to_numpy().any():
        raise ValueError(f"{path}: needs all 13 candidates of every block 0..n-1")
    if num_blocks is not None and len(blocks) != num_blocks:
        raise ValueError(f"{path}: has {len(blocks)} blocks, the supernet {num_blocks}")
    matrix = table.to_numpy(dtype=np.float64)
    if value == "logit":
        if "live" in df.columns:
            live = df.pivot(index="block", columns="candidate", values="live")[list(CANDIDATE_NAMES)]
            matrix = np.where(live.to_numpy(dtype=bool), matrix, -np.inf)
        matrix = np.exp(matrix - matrix.max(axis=1, keepdims=True))
        matrix /= matrix.sum(axis=1, keepdims=True)
    return check_probabilities(matrix, str(path))


def check_probabilities(probs: np.ndarray, where: str = "probabilities") -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != NUM_CANDIDATES:
        raise ValueError(f"{where}: expected (blocks, {NUM_CANDIDATES}), got shape {probs.shape}")
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise ValueError(f"{where}: probabilities must be finite and >= 0")
    sums = probs.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1) > 1e-4)
    if bad.size:
        raise ValueError(f"{where}: rows must sum to 1; block {bad[0]} sums to {sums[bad[0]]:.6f}")
    return probs / sums[:, None]  # remove float32 round-off before building the CDF


def sample_architectures(probs: np.ndarray, space: str, num: int, seed: int = 0,
                         max_draws: int | None = None) -> Samples:
    """Draw `num` distinct architectures from independent per-block categoricals (eq. 2).

    The argmax architecture (most likely candidate of every block, first index on ties) comes
    first; every further one is drawn with numpy's generator seeded by `seed`, and a draw that
    repeats an architecture already taken is redrawn (counted in `duplicates`). Pruned candidates
    have p = 0 and are never drawn. When fewer than `num` architectures have non-zero probability,
    all of them are returned; a peaked distribution stops at `max_draws` (default 1000 * num).
    """
    probs = check_probabilities(probs)
    if num < 1:
        raise ValueError(f"num_samples must be >= 1, got {num}")
    if probs.shape[0] != get_space(space).num_blocks:
        raise ValueError(f"the {space} space has {get_space(space).num_blocks} blocks, "
                         f"the probabilities {probs.shape[0]}")
    live = probs > 0
    support = math.prod(int(n) for n in live.sum(axis=1))
    support = min(support, 2 ** 63)
    wanted = min(num, support)
    max_draws = max_draws if max_draws is not None else 1000 * num
    # inverse-CDF sampling; past a block's last live column the CDF is +inf, so round-off in the
    # last live value can never select a pruned candidate behind it
    cdf = np.cumsum(probs, axis=1)
    last_live = NUM_CANDIDATES - 1 - np.argmax(live[:, ::-1], axis=1)
    cdf[np.arange(NUM_CANDIDATES)[None, :] >= last_live[:, None]] = np.inf
    logp = np.log(np.where(live, probs, 1.0))
    rows = np.arange(len(probs))

    argmax = tuple(probs.argmax(axis=1).tolist())
    taken, order = {argmax}, [argmax]
    rng = np.random.default_rng(seed)
    draws = duplicates = 0
    while len(order) < wanted and draws < max_draws:
        u = rng.random((_CHUNK, len(probs)))
        chunk = (u[:, :, None] < cdf[None]).argmax(axis=2)  # (chunk, blocks)
        for choice in map(tuple, chunk.tolist()):
            if len(order) >= wanted or draws >= max_draws:
                break
            draws += 1
            if choice in taken:
                duplicates += 1
                continue
            taken.add(choice)
            order.append(choice)
    archs = tuple(Architecture(space, [CANDIDATE_NAMES[j] for j in c]) for c in order)
    log_probs = tuple(float(logp[rows, list(c)].sum()) for c in order)
    return Samples(archs, log_probs, draws, duplicates, support, len(order) < wanted)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   device: torch.device | str = "cpu") -> int:
    """Re-estimate every BatchNorm's running statistics as the plain average over `batches`.

    Returns the number of images seen; the model is left in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: the order of the batches does not matter
    model.train()
    images = 0
    for x, _ in batches:
        model(pad_to_multiple(x.to(device)))
        images += x.shape[0]
    model.eval()
    return images


def evaluate_path(supernet: Supernet, arch: Architecture, val_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                  num_classes: int, bn_batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
                  class_names: tuple[str, ...] | None = None) -> dict:
    """Class mIoU of `arch`'s path through the supernet (Figure 4) on `val_batches`.

    The supernet must be in eval mode and is only read, so threads may evaluate paths at once.
    With `bn_batches`, the path is first copied out as its static network (same weights, same
    logits) and only the copy's BatchNorm statistics are re-estimated: the shared supernet is
    never changed, so one evaluation cannot leak into the next.

    Returns:
        `evaluate_segmentation`'s scores (class_iou, class_miou, ..., images) plus `bn_images`.
    """
    path = SupernetPath(supernet, arch)
    if path.training:
        raise ValueError("evaluate_path: put the supernet in eval mode first (supernet.eval())")
    device = next(supernet.parameters()).device
    forward, bn_images = path, 0
    if bn_batches is not None:
        forward = extract_network(supernet, arch)
        bn_images = recalibrate_bn(forward, bn_batches, device)
    return {**evaluate_segmentation(forward, val_batches, num_classes, device, class_names=class_names),
            "bn_images": bn_images}


def load_supernet(path: str | Path, device: torch.device | str = "cpu") -> Supernet:
    """The trained supernet of the search stage's `supernet.pt`, pruned as it was, in eval mode.

    Reads {space, num_classes, live_mask, supernet: state_dict} as the search stage writes it
    (a search checkpoint holds the state under `model`, and its `fingerprint` carries space and num_classes).
    Errors name the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: supernet checkpoint not found (run the search stage first)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file raises several types
        raise ValueError(f"{path}: not a readable supernet checkpoint ({e})") from None
    if not isinstance(payload, dict) or not {"supernet", "model"} & payload.keys():
        raise ValueError(f"{path}: expected a dict with the supernet's state under 'supernet'")
    meta = {**payload.get("fingerprint", {}), **payload}
    missing = [k for k in ("space", "num_classes") if k not in meta]
    if missing:
        raise ValueError(f"{path}: the checkpoint does not record {', '.join(missing)}")
    state = payload["supernet"] if "supernet" in payload else payload["model"]
    supernet = Supernet(meta["space"], int(meta["num_classes"]))
    live = meta.get("live_mask")
    if live is None:  # the live buffers are part of the state
        live = torch.stack([state[f"blocks.{i}.live"] for i in range(len(supernet.blocks))])
    supernet.set_live_mask(torch.as_tensor(live, dtype=torch.bool))
    try:
        supernet.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: the state does not fit a {meta['space']} supernet ({e})") from None
    return supernet.to(device).eval()
