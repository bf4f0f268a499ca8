"""Gumbel-softmax relaxation of each superblock's categorical choice (paper section 4.1, eq. 2) and
the temperature schedules that anneal tau from 5.0 to 1.0 over the search."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

TAU_SCHEDULES = ("linear", "exponential")


def sample_gumbel(shape: tuple[int, ...], generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard Gumbel noise -log(-log U) of `shape`, moved to `device`.

    The uniforms come from `generator`'s own device (the CPU for a CPU generator), so one seed gives
    the same samples whether the supernet runs on the CPU or a GPU; the noise is tiny (N x blocks x
    13), so drawing it on the CPU costs nothing.
    """
    source = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(shape, generator=generator, device=source, dtype=torch.float32)
    # keep log(u) and log(-log u) finite: U = 0 or U = 1 would give an infinite sample
    tiny = torch.finfo(torch.float32).tiny
    u = u.clamp_(min=tiny, max=1.0 - torch.finfo(torch.float32).eps)
    return (-torch.log(-torch.log(u))).to(device)


def gumbel_softmax(logits: torch.Tensor, noise: torch.Tensor, tau: float, hard: bool = False) -> torch.Tensor:
    """Relaxed one-hot samples softmax((logits + g) / tau) over the last dimension.

    Args:
        logits: (..., 13) architecture logits; -inf marks a pruned candidate, which gets weight 0.
        noise: Gumbel noise broadcastable against logits, e.g. (N, blocks, 13) for per-image samples.
        tau: the temperature (> 0).
        hard: straight-through: exact one-hot in the forward pass, the soft sample's gradient.
    Returns:
        (..., 13) non-negative weights summing to 1.
    """
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    soft = F.softmax((logits.float() + noise) / tau, dim=-1)
    if not hard:
        return soft
    one_hot = F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
    return one_hot - soft.detach() + soft


@dataclass(frozen=True)
class TauSchedule:
    """tau over the search: `linear` per step (the authors' search utility), or `exponential` per
    epoch (FBNet: tau x `decay` each epoch, 0.956 in FBNet). Without `decay` the exponential rate
    is chosen so that the last epoch runs at `end`; with one, tau never falls below `end`. Defaults and checks:
    params.yaml's `search` section (tau_schedule, tau_start, tau_end, tau_decay)."""

    kind: str  # "linear" or "exponential"
    start: float
    end: float
    decay: float | None

    def at(self, step: int, total_steps: int, epoch: int, epochs: int) -> float:
        """tau for global step `step` of `total_steps`, which lies in epoch `epoch` of `epochs`."""
        if self.kind == "linear":
            progress = step / max(1, total_steps - 1)
            return self.start + (self.end - self.start) * min(1.0, progress)
        if self.decay is not None:
            return max(self.end, self.start * self.decay ** epoch)
        rate = math.log(self.end / self.start) / max(1, epochs - 1)
        return self.start * math.exp(rate * min(epoch, epochs - 1))
