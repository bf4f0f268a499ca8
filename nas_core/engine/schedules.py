"""Learning-rate schedules of the retraining stages (paper section 5.3.2): step decay (Cityscapes fine:
/10 at epochs 50 and 75), poly (DeepLabV3+'s COCO regime), constant, each with an optional warmup.

A schedule is a pure function of the fractional epoch, so a resumed run needs no scheduler state."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

SCHEDULES = ("step", "poly", "constant")


class Schedule(Protocol):
    def factor(self, epoch: float) -> float:
        """The multiplier of the base learning rate at fractional epoch `epoch` (0 = the first step)."""


@dataclass(frozen=True)
class StepDecay:
    """Multiply by `gamma` at each milestone epoch (ResNet's and the paper's Cityscapes fine regime)."""

    milestones: tuple[int, ...]
    gamma: float = 0.1

    def factor(self, epoch: float) -> float:
        return self.gamma ** sum(epoch >= m for m in self.milestones)


@dataclass(frozen=True)
class Poly:
    """(1 - t / T) ** power, the DeepLab schedule, evaluated every step."""

    total_epochs: float
    power: float = 0.9

    def factor(self, epoch: float) -> float:
        return max(0.0, 1.0 - epoch / self.total_epochs) ** self.power


@dataclass(frozen=True)
class Constant:
    def factor(self, epoch: float) -> float:
        return 1.0


@dataclass(frozen=True)
class Warmup:
    """Linear ramp from `start_factor` to 1 over the first `epochs`, multiplied onto `schedule`."""

    schedule: Schedule
    epochs: float
    start_factor: float = 0.1

    def factor(self, epoch: float) -> float:
        base = self.schedule.factor(epoch)
        if epoch >= self.epochs:
            return base
        return base * (self.start_factor + (1.0 - self.start_factor) * epoch / self.epochs)


def build_schedule(kind: str, epochs: int, milestones: tuple[int, ...] = (), gamma: float = 0.1,
                   power: float = 0.9, warmup_epochs: float = 0.0, warmup_factor: float = 0.1) -> Schedule:
    """The schedule `kind` ('step', 'poly' or 'constant') for a run of `epochs` epochs.

    Milestones must increase strictly and lie inside the run, so a typo cannot silently disable a decay.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"schedule: unknown kind {kind!r}; valid kinds are: {', '.join(SCHEDULES)}")
    if kind == "step":
        if list(milestones) != sorted(set(milestones)):
            raise ValueError(f"milestones: must increase strictly, got {list(milestones)}")
        if any(not 0 < m < epochs for m in milestones):
            raise ValueError(f"milestones: must lie in 1..{epochs - 1} for {epochs} epochs, got {list(milestones)}")
        schedule: Schedule = StepDecay(tuple(milestones), gamma)
    elif kind == "poly":
        schedule = Poly(float(epochs), power)
    else:
        schedule = Constant()
    if warmup_epochs > 0:
        schedule = Warmup(schedule, warmup_epochs, warmup_factor)
    return schedule
