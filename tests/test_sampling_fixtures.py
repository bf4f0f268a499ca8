"""Fixtures of the sampling tests: a 'searched' Small supernet (random theta, some candidates pruned,
non-trivial BN statistics), the search stage's two outputs, and a tiny generated Cityscapes."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from nas_core.io import atomic_torch_save, atomic_write_parquet
from nas_core.search.loop import theta_rows
from nas_core.search.supernet import Supernet, build_supernet

SPACE = "small"
CLASSES = 19
IMAGE_SIZE = (64, 128)


def searched_supernet(seed: int = 0) -> Supernet:
    """A Small supernet as a search leaves it: peaked theta, pruned candidates, BN statistics."""
    g = torch.Generator().manual_seed(seed)
    supernet = build_supernet(SPACE, CLASSES)
    with torch.no_grad():
        for block in supernet.blocks:
            block.theta.copy_(torch.randn(13, generator=g) * 1.5)
        for m in supernet.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    supernet.prune(0.02)  # section 4.2 with a higher threshold, so some blocks lose candidates
    return supernet.eval()


def write_search_outputs(directory: Path, supernet: Supernet) -> tuple[Path, Path]:
    """supernet.pt and theta.parquet as the search stage writes them (theta of every epoch)."""
    supernet_path, theta_path = directory / "supernet.pt", directory / "theta.parquet"
    atomic_torch_save(supernet_path, {"format": "squeezenas.supernet.v1", "space": supernet.space.name,
                                      "num_classes": supernet.num_classes, "live_mask": supernet.live_mask(),
                                      "supernet": supernet.state_dict()})
    start = [dict(r, logit=0.0, probability=1 / 13, live=True) for r in theta_rows(supernet, 0)]
    atomic_write_parquet(theta_path, pd.DataFrame(start + theta_rows(supernet, 3)))
    return supernet_path, theta_path


def random_batches(num: int = 2, batch: int = 2, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, *IMAGE_SIZE, generator=g),
             torch.randint(0, CLASSES, (batch, *IMAGE_SIZE), generator=g)) for _ in range(num)]
