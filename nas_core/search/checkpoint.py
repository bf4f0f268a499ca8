"""Search checkpoints (paper section 5.3.1's long searches must survive interruption): everything
the loop's future depends on, written atomically, so a resumed search continues exactly."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from nas_core.io import atomic_torch_save
from nas_core.search.supernet import Supernet

CHECKPOINT_NAME = "last.pt"
CHECKPOINT_FORMAT = "squeezenas.search-checkpoint.v1"
# settings that do not change the trajectory, so a run may resume with other values of them
_FREE = ("checkpoint_every", "log_every")


def fingerprint_key(fingerprint: dict) -> str:
    """The short name of a fingerprint: the checkpoint's folder."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


class Checkpointer:
    """Saves and restores `dir/<fingerprint key>/last.pt` for one search configuration.

    The fingerprint names what the trajectory depends on (config, space, cost matrix, data sizes,
    world size). Each configuration has its own folder, so a run with other settings never
    overwrites a killed run's checkpoint: going back to the first settings resumes it.
    """

    def __init__(self, directory: str | Path, config, supernet: Supernet, cost: np.ndarray,
                 fixed_cost: float, world_size: int, data: list[tuple[int, int]], rank: int = 0):
        self.rank = rank
        settings = {k: v for k, v in config.to_dict().items() if k not in _FREE}
        self.fingerprint = {
            "config": settings, "space": supernet.space.name, "num_classes": supernet.num_classes,
            "cost_sha256": hashlib.sha256(np.ascontiguousarray(cost, dtype=np.float64).tobytes()).hexdigest(),
            "fixed_cost": float(fixed_cost), "world_size": world_size, "data": [list(d) for d in data],
        }
        self.path = Path(directory) / fingerprint_key(self.fingerprint) / CHECKPOINT_NAME
        self._payload: dict | None = None

    def save(self, supernet: Supernet, opt_w, opt_t, scaler, state: dict) -> None:
        if self.rank != 0:
            return
        atomic_torch_save(self.path, {
            "format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint,
            "supernet": supernet.state_dict(), "live_mask": supernet.live_mask().cpu(),
            "opt_weights": opt_w.state_dict(), "opt_theta": opt_t.state_dict(), "scaler": scaler.state_dict(),
            "state": {k: (v.clone() if torch.is_tensor(v) else v) for k, v in state.items()},
        })

    def restore(self, supernet: Supernet, state: dict, log: Callable[[str], None]) -> dict | None:
        """Load a matching checkpoint into `supernet` and `state`; returns its position or None."""
        if not self.path.is_file():
            others = sorted(p.parent.name for p in self.path.parent.parent.glob(f"*/{CHECKPOINT_NAME}"))
            if others and self.rank == 0:
                log(f"[search] no checkpoint of this configuration; kept those of {len(others)} other(s) in "
                    f"{self.path.parent.parent}: {', '.join(others)}")
            return None
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # an unreadable file is an error: it was written atomically
            raise ValueError(f"{self.path}: not a readable search checkpoint ({e})") from None
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{self.path}: not a search checkpoint of format {CHECKPOINT_FORMAT}")
        if payload["fingerprint"] != self.fingerprint:  # its folder is named by the fingerprint: a moved file
            raise ValueError(f"{self.path}: holds the checkpoint of another configuration than its folder names")
        # prune first: the checkpoint's state holds only the live candidates' modules
        supernet.set_live_mask(payload["live_mask"])
        supernet.load_state_dict(payload["supernet"])
        state.update(payload["state"])
        self._payload = payload
        position = {k: state[k] for k in ("epoch", "phase", "batch", "step")}
        if self.rank == 0:
            log(f"[search] resuming from {self.path}: epoch {position['epoch'] + 1}, phase {position['phase']}, "
                f"batch {position['batch']}, step {position['step']}")
        return position

    def load_optimizers(self, opt_w, opt_t, scaler) -> None:
        """Restore the optimizers built over the restored (pruned) supernet, and the AMP scaler."""
        opt_w.load_state_dict(self._payload["opt_weights"])
        opt_t.load_state_dict(self._payload["opt_theta"])
        scaler.load_state_dict(self._payload["scaler"])
