"""Checkpoints of the search and the retraining (their long runs must survive interruption): one format,
written atomically by rank 0, holding everything a run's future depends on (modules, optimizers, loss
scale, generators, the loop's state), so that a resumed run continues exactly; a fingerprint names the
settings the run depends on, and a checkpoint of other settings is never resumed."""
from __future__ import annotations

import hashlib
import json
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import torch
from torch import nn
from torch.utils.data import DataLoader

from nas_core.engine.distributed import DistInfo, barrier
from nas_core.engine.precision import MixedPrecision
from nas_core.engine.seeding import rng_state, set_rng_state
from nas_core.io import atomic_torch_save

CHECKPOINT_NAME = "last.pt"
CHECKPOINT_FORMAT = "squeezenas.checkpoint.v2"
State = TypeVar("State")


def fingerprint_key(fingerprint: Any) -> str:
    """The short name of a fingerprint (any JSON value): the folder of its configuration's checkpoint."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint's payload: the loop state's fields beside model, optimizers, scaler, rng, loader_generators.
    Our own file: full unpickling (a callback's metrics in the history may be of any type)."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such checkpoint") from None
    except Exception as e:  # a truncated or foreign file raises several types; ours are written atomically
        raise ValueError(f"{path}: not a readable checkpoint ({e})") from None
    found = payload.get("format") if isinstance(payload, dict) else None
    if found != CHECKPOINT_FORMAT:  # e.g. the search's or the training's own format before they shared this one
        raise ValueError(f"{path}: not a checkpoint of format {CHECKPOINT_FORMAT}"
                         + (f" (it has format {found!r}: remove it to start afresh)" if found is not None else ""))
    return payload


class Checkpoint:
    """One run's checkpoint file. A file of another fingerprint is not resumed: in a per-configuration slot
    (`Checkpoint.slot`) it is an error, as its folder names another configuration (a file moved by hand);
    elsewhere the run starts afresh and overwrites it.

    Args:
        name: the loop's name in the log lines.
    """

    def __init__(self, path: str | Path, fingerprint: Any, info: DistInfo, *, name: str = "train",
                 log: Callable[[str], None] = print, in_slot: bool = False) -> None:
        self.path, self.fingerprint, self.info = Path(path), fingerprint, info
        self.name, self.log, self.in_slot = name, log, in_slot

    @classmethod
    def slot(cls, directory: str | Path, fingerprint: Any, info: DistInfo, **kwargs) -> Checkpoint:
        """`directory/<fingerprint key>/last.pt`: each configuration has its own folder, so a run with other
        settings never overwrites a killed run's checkpoint, and going back to the first settings resumes it."""
        return cls(Path(directory) / fingerprint_key(fingerprint) / CHECKPOINT_NAME, fingerprint, info,
                   in_slot=True, **kwargs)

    def save(self, state, model: nn.Module, optimizers: dict[str, torch.optim.Optimizer],
             precision: MixedPrecision, loaders: Sequence[DataLoader], **extra: Any) -> None:
        """Write `state` (the loop's dataclass) and the rest atomically on rank 0; the other ranks wait."""
        if self.info.is_main:
            atomic_torch_save(self.path, {
                "format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint, "model": model.state_dict(),
                "optimizers": {k: opt.state_dict() for k, opt in optimizers.items()},
                "scaler": precision.scaler.state_dict(), "rng": rng_state(),
                "loader_generators": [None if d.generator is None else d.generator.get_state() for d in loaders],
                **extra, **{f.name: getattr(state, f.name) for f in fields(state)}})
        barrier(self.info)

    def load(self) -> dict | None:
        """This configuration's payload, or None when there is none (see the class for another's)."""
        if not self.path.is_file():
            root = self.path.parent.parent
            others = sorted(p.parent.name for p in root.glob(f"*/{CHECKPOINT_NAME}")) if self.in_slot else []
            if others and self.info.is_main:
                self.log(f"[{self.name}] no checkpoint of this configuration; kept those of {len(others)} other(s) "
                         f"in {root}: {', '.join(others)}")
            return None
        payload = load_checkpoint(self.path)
        if payload["fingerprint"] == self.fingerprint:
            return payload
        if self.in_slot:
            raise ValueError(f"{self.path}: holds the checkpoint of another configuration than its folder names")
        self.log(f"[{self.name}] {self.path} belongs to another configuration; starting afresh")
        return None

    @staticmethod
    def restore(payload: dict, state_type: type[State], model: nn.Module,
                optimizers: dict[str, torch.optim.Optimizer], precision: MixedPrecision,
                loaders: Sequence[DataLoader]) -> State:
        """Load a payload into the modules, optimizers, scaler and generators; returns the loop's state."""
        model.load_state_dict(payload["model"])
        for key, optimizer in optimizers.items():
            optimizer.load_state_dict(payload["optimizers"][key])
        precision.scaler.load_state_dict(payload["scaler"])
        set_rng_state(payload["rng"])
        for loader, generator in zip(loaders, payload["loader_generators"]):
            if generator is not None and loader.generator is not None:
                loader.generator.set_state(generator)
        return state_type(**{f.name: payload[f.name] for f in fields(state_type)})
