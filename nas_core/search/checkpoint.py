"""What a search's checkpoint is named by (paper section 5.3.1's long searches must survive interruption):
the fingerprint of everything its trajectory depends on. The checkpoint itself is the engine's
(`nas_core.engine.checkpoint`), one folder per fingerprint."""
from __future__ import annotations

import hashlib

import numpy as np

from nas_core.search.supernet import Supernet

# settings that do not change the trajectory, so a run may resume with other values of them
_FREE = ("checkpoint_every", "log_every")


def search_fingerprint(config, supernet: Supernet, cost: np.ndarray, fixed_cost: float, world_size: int,
                       data: list[tuple[int, int]], pairwise: np.ndarray | None = None) -> dict:
    """The config (less the free settings), space, cost matrix, data sizes (batches, batch size per loader)
    and world size: a run with other ones writes its own checkpoint and never resumes this one."""
    settings = {k: v for k, v in config.to_dict().items() if k not in _FREE}
    return {
        "config": settings, "space": supernet.space.name, "num_classes": supernet.num_classes,
        "cost_sha256": hashlib.sha256(np.ascontiguousarray(cost, dtype=np.float64).tobytes()).hexdigest(),
        "fixed_cost": float(fixed_cost), "world_size": world_size, "data": [list(d) for d in data],
        # a latency model's neighbour terms (absent for an additive cost: earlier checkpoints still match)
        **({} if pairwise is None else {
            "pairwise_sha256": hashlib.sha256(np.ascontiguousarray(pairwise, dtype=np.float64).tobytes()).hexdigest()}),
    }
