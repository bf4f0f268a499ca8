"""The stochastic supernet (paper section 4, Figure 3): the stem, one superblock of 13 candidates per
block position, the space's decoder. Each superblock owns its architecture logits theta (eq. 2);
a candidate below the pruning threshold is removed from compute (section 4.2).

`fused` (issue 19, beyond the paper: an implementation choice, not a change of the method) runs the live
candidates of each family as fewer, larger kernels with the same parameters and the same arithmetic up to
rounding (nas_core.search.fused); `resolve_fused` maps `search.fused: auto` to what benchmarks/README.md
measured faster on the device."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from nas_core.search import fused as fusion
from nas_core.search.gumbel import gumbel_softmax, sample_gumbel
from nas_core.space.blocks import build_candidate, init_weights
from nas_core.space.candidates import CANDIDATE_NAMES, CANDIDATES, NUM_CANDIDATES
from nas_core.space.encoder import build_post_encoder, build_stem, encode
from nas_core.space.network import SegmentationNetwork, build_space_decoder, check_input
from nas_core.space.spaces import NUM_CLASSES, Architecture, BlockSpec, get_space

_COLUMN = {name: j for j, name in enumerate(CANDIDATE_NAMES)}


def _mix(out: torch.Tensor | None, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """out + w[n] * y[n] for one candidate's output y (N, C_out, H', W') and its per-image weights w (N,): in
    place on our own sum, one kernel per candidate, and nothing but y and w is saved for the backward."""
    w = w.to(y.dtype).view(-1, 1, 1, 1)
    return y * w if out is None else out.addcmul_(y, w)


class SuperBlock(nn.Module):
    """The 13 candidates of one block, mixed with per-image weights; the residual is added outside.

    `ops` holds the candidates' modules of `build_candidate`, keyed by candidate name, so their state maps
    onto a static `Block.op`. `skip` under a residual has no module: it contributes zero, the block is
    then the identity. `live` marks the candidates not yet pruned.

    `fused`: the forward runs each family's live candidates fused (nas_core.search.fused), same parameters,
    same state; `units` is the plan, rebuilt when candidates are pruned. Neither is part of the state.
    """

    def __init__(self, spec: BlockSpec, fused: bool = False):
        super().__init__()
        self.spec = spec
        self.residual = spec.residual
        modules = {c.name: build_candidate(c, spec) for c in CANDIDATES}
        self.ops = nn.ModuleDict({n: m for n, m in modules.items() if m is not None})
        self.theta = nn.Parameter(torch.zeros(NUM_CANDIDATES))  # uniform p at the start
        self.register_buffer("live", torch.ones(NUM_CANDIDATES, dtype=torch.bool))
        self.fused = fused
        self.depthwise_variant = fusion.DEPTHWISE
        self.units = fusion.fusion_plan(list(self.ops))

    def logits(self) -> torch.Tensor:
        """theta with pruned candidates at -inf, so softmax renormalises over the live ones."""
        return self.theta.masked_fill(~self.live, float("-inf"))

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Mix the live candidates: sum_j w[n, j] * candidate_j(x[n]) (+ x under a residual).

        Args:
            x: (N, C_in, H, W).
            weights: (N, 13) per-image mixing weights, zero for pruned candidates.
        """
        if self.fused:
            return self._forward_fused(x, weights)
        out = None
        for name, op in self.ops.items():  # pruned candidates are no longer in the dict
            out = _mix(out, op(x), weights[:, _COLUMN[name]])
        if self.residual:
            return x if out is None else x + out
        return out

    def _forward_fused(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """`forward` with each family's live candidates as one fused unit; a unit of one runs its own module."""
        out = None
        for unit in self.units:
            ops = [self.ops[name] for name in unit]
            if len(unit) > 1 and fusion.fusable(ops):
                columns = [_COLUMN[name] for name in unit]
                y = fusion.fused_family(x, ops, weights[:, columns], self.depthwise_variant)  # the weighted sum
                out = y if out is None else out.add_(y)
                continue
            for name, op in zip(unit, ops):  # as `forward`
                out = _mix(out, op(x), weights[:, _COLUMN[name]])
        if self.residual:
            return x if out is None else x + out
        return out

    def forward_candidate(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """One path: exactly the static `Block` of candidate `name`."""
        if name in self.ops:
            out = self.ops[name](x)
            return x + out if self.residual else out
        if name == "skip" and self.residual:
            return x
        raise ValueError(f"block {self.spec.index}: candidate {name!r} was pruned from the supernet")

    def prune(self, threshold: float) -> list[tuple[str, float]]:
        """Remove the live candidates whose probability is below `threshold`; returns (name, p)."""
        with torch.no_grad():
            p = torch.softmax(self.logits().float(), dim=0)
            drop = self.live & (p < threshold)
        removed = [(CANDIDATE_NAMES[j], float(p[j])) for j in torch.nonzero(drop).flatten().tolist()]
        self.set_live(self.live & ~drop)
        return removed

    def set_live(self, live: torch.Tensor) -> None:
        """Keep exactly the candidates marked in `live` (13 bools); deleted modules stay deleted."""
        live = live.to(device=self.live.device, dtype=torch.bool)
        if not live.any():
            raise ValueError(f"block {self.spec.index}: pruning would remove every candidate")
        if (live & ~self.live).any():
            raise ValueError(f"block {self.spec.index}: a pruned candidate cannot be revived")
        self.live.copy_(live)
        for j in torch.nonzero(~live).flatten().tolist():
            if CANDIDATE_NAMES[j] in self.ops:
                del self.ops[CANDIDATE_NAMES[j]]
        self.units = fusion.fusion_plan(list(self.ops))  # pruned candidates leave their family's unit

    def extra_repr(self) -> str:
        return f"fused={self.fused}, units={self.units}" if self.fused else "fused=False"


class Supernet(nn.Module):
    """Maps a normalized (N, 3, H, W) batch to (N, classes, H, W) logits of a sampled mixture."""

    def __init__(self, space: str, num_classes: int = NUM_CLASSES, fused: bool = False):
        super().__init__()
        self.space = get_space(space)
        self.num_classes = num_classes
        self.low_level_index = self.space.low_level_index
        # the same modules as SegmentationNetwork, so state names line up with a static network
        self.stem = build_stem(self.space)
        self.blocks = nn.ModuleList(SuperBlock(spec, fused) for spec in self.space.blocks)
        self.post_encoder = build_post_encoder(self.space)
        self.decoder = build_space_decoder(self.space, num_classes)
        init_weights(self)

    @property
    def fused(self) -> bool:
        return all(block.fused for block in self.blocks)

    def set_fused(self, fused: bool, depthwise: str | None = None) -> None:
        """Run the superblocks fused or plain (same parameters, same state); `depthwise`: the fused variant."""
        if depthwise is not None and depthwise not in fusion.DEPTHWISE_VARIANTS:
            raise ValueError(f"unknown depthwise variant {depthwise!r}; valid: {', '.join(fusion.DEPTHWISE_VARIANTS)}")
        for block in self.blocks:
            block.fused = bool(fused)
            if depthwise is not None:
                block.depthwise_variant = depthwise

    def theta_fingerprint(self) -> str:
        """sha256 of theta (float32, blocks x candidates) and the live mask: equal on every rank of a healthy
        data-parallel search."""
        theta = torch.stack([p.detach().float().cpu() for p in self.arch_parameters()]).contiguous()
        return hashlib.sha256(theta.numpy().tobytes() + self.live_mask().cpu().numpy().tobytes()).hexdigest()

    def arch_parameters(self) -> list[nn.Parameter]:
        """theta, collected from the superblocks that own it, in block order."""
        return [block.theta for block in self.blocks]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def arch_logits(self) -> torch.Tensor:
        """(num_blocks, 13) logits, -inf at pruned candidates."""
        return torch.stack([block.logits() for block in self.blocks])

    def probabilities(self) -> torch.Tensor:
        """(num_blocks, 13) p(i, j | theta) of eq. 2; rows sum to 1."""
        return torch.softmax(self.arch_logits().float(), dim=-1)

    def live_mask(self) -> torch.Tensor:
        return torch.stack([block.live for block in self.blocks])

    def set_live_mask(self, mask: torch.Tensor) -> None:
        """Prune to `mask` (num_blocks, 13), e.g. the mask of a checkpoint before loading its state."""
        if tuple(mask.shape) != (len(self.blocks), NUM_CANDIDATES):
            raise ValueError(f"live mask must be ({len(self.blocks)}, {NUM_CANDIDATES}), got {tuple(mask.shape)}")
        for block, live in zip(self.blocks, mask):
            block.set_live(live)

    def prune(self, threshold: float) -> list[tuple[int, str, float]]:
        """Section 4.2: drop every live candidate with p < threshold; returns (block, name, p)."""
        return [(i, name, p) for i, block in enumerate(self.blocks) for name, p in block.prune(threshold)]

    def sample_weights(self, batch: int, tau: float, generator: torch.Generator | None = None,
                       hard: bool = False) -> torch.Tensor:
        """(batch, num_blocks, 13) Gumbel-softmax weights, drawn independently for every image."""
        logits = self.arch_logits()
        noise = sample_gumbel((batch, *logits.shape), generator, logits.device)
        return gumbel_softmax(logits, noise, tau, hard)

    def forward(self, x: torch.Tensor, tau: float, generator: torch.Generator | None = None,
                hard: bool = False) -> torch.Tensor:
        return self.forward_weights(x, self.sample_weights(x.shape[0], tau, generator, hard))

    def forward_weights(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The supernet with given mixing weights (N, num_blocks, 13)."""
        check_input(x)
        # weights positional, so a superblock's forward hooks see (x, weights)
        blocks = [lambda h, block=block, w=weights[:, i]: block(h, w) for i, block in enumerate(self.blocks)]
        feature, low = encode(x, self.stem, blocks, self.post_encoder, self.low_level_index)
        return self.decoder(feature, low, x.shape[-2:])

    def forward_architecture(self, x: torch.Tensor, arch: Architecture) -> torch.Tensor:
        """One architecture's path through the supernet (Figure 4), with the supernet's weights."""
        check_input(x)
        if arch.space != self.space.name:
            raise ValueError(f"architecture is for the {arch.space} space, the supernet for {self.space.name}")
        blocks = [partial(block.forward_candidate, name=name) for block, name in zip(self.blocks, arch.choices)]
        feature, low = encode(x, self.stem, blocks, self.post_encoder, self.low_level_index)
        return self.decoder(feature, low, x.shape[-2:])

    def argmax_architecture(self) -> Architecture:
        """The most likely candidate of every block."""
        return Architecture(self.space.name, [CANDIDATE_NAMES[j] for j in self.probabilities().argmax(-1).tolist()])


@dataclass(frozen=True)
class SupernetPath:
    """One architecture's path through a supernet (Figure 4) as a forward callable, with the supernet's weights
    and mode: what the sample stage scores with `evaluate_segmentation`. A value, not a state of the supernet."""

    supernet: Supernet
    arch: Architecture

    @property
    def training(self) -> bool:
        return self.supernet.training

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.supernet.forward_architecture(x, self.arch)


# search.fused: auto, per device type: what benchmarks/bench_supernet.py measured faster (benchmarks/README.md,
# issue 19). CPU (2026-12-07, 1 thread, 64x64, batch 4): fused / plain step 1.11 small, 0.91 large, 1.12-1.18
# xlarge, so plain. CUDA: not measured yet (no GPU was lent), so plain until `bench_supernet.py --device cuda
# --figures fused` shows the fused step faster; unmeasured devices get the plain supernet.
FUSED_AUTO: dict[str, bool] = {"cpu": False, "cuda": False}


def resolve_fused(setting: bool | str, device: torch.device | str) -> bool:
    """`search.fused` (true, false or "auto") for the supernet on `device`."""
    if setting == "auto":
        return FUSED_AUTO.get(torch.device(device).type, False)
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"search.fused must be true, false or auto, got {setting!r}")


def build_supernet(space: str, num_classes: int = NUM_CLASSES, fused: bool = False) -> Supernet:
    """The supernet of `space`; `fused` runs the superblocks fused (a bool: see `resolve_fused` for 'auto')."""
    return Supernet(space, num_classes, fused)


def extract_network(supernet: Supernet, arch: Architecture) -> SegmentationNetwork:
    """A static network of `arch` carrying the supernet's weights (no search machinery left)."""
    net = SegmentationNetwork(arch, supernet.num_classes)
    for part in ("stem", "post_encoder", "decoder"):
        getattr(net, part).load_state_dict(getattr(supernet, part).state_dict())
    for i, (block, name) in enumerate(zip(net.blocks, arch.choices)):
        if block.op is None:
            continue
        source = supernet.blocks[i].ops
        if name not in source:
            raise ValueError(f"block {i}: candidate {name!r} was pruned from the supernet")
        block.op.load_state_dict(source[name].state_dict())
    return net.to(next(supernet.parameters()).device)
