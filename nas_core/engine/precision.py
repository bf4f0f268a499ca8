"""Mixed precision of the search and the retraining: float16 autocast and loss scaling on GPU, plain
float32 on CPU (where float16 would only be slower), and the one backward-and-step of both loops."""
from __future__ import annotations

import contextlib
from typing import Iterable, Sequence

import torch
from torch import nn


def autocast(device: torch.device, enabled: bool):
    """float16 autocast on CUDA when `enabled`; a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


class MixedPrecision:
    """Autocast and a GradScaler that are on together, only on CUDA and only when asked for."""

    def __init__(self, device: torch.device, enabled: bool) -> None:
        self.device = device
        self.enabled = enabled and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.enabled)

    def autocast(self):
        return autocast(self.device, self.enabled)

    def backward_step(self, loss: torch.Tensor, optimizers: Sequence[torch.optim.Optimizer],
                      stepping: Sequence[torch.optim.Optimizer] | None = None, *, grad_clip: float | None = None,
                      parameters: Iterable[torch.Tensor] = ()) -> None:
        """Clear the gradients of `optimizers`, back-propagate the scaled loss, step those of `stepping`
        (default: all of them) and update the scale; a step skipped for inf/nan gradients leaves the weights.

        Args:
            grad_clip: before each step, the gradients of `parameters` are unscaled and clipped to this norm.
        """
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        parameters = list(parameters)
        for optimizer in optimizers if stepping is None else stepping:
            if grad_clip:
                self.scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(parameters, grad_clip)
            self.scaler.step(optimizer)
        self.scaler.update()
