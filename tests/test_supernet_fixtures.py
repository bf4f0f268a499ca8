"""Fixtures of the search tests: a tiny space (8/16/24 channels, every `skip` case, 3 classes) and
a tiny seeded dataset of 32x64 images whose labels follow the image, so a search can learn."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from nas_core.space.spaces import SPACES, SearchSpace

# blocks: 8->8 s2 (factorized reduce), 8->8 s1 (residual: skip is zero), 8->16 s2, 16->16 s1,
# 16->16 s2, 16->24 s1 (skip is a 1x1 projection); output stride 16, low-level feature at stride 8
TINY = SearchSpace(name="tiny", stem_channels=8, groups=((8, 2, 2), (16, 2, 2), (16, 1, 2), (24, 1, 1)),
                   post_encoder_channels=None, decoder="lraspp", decoder_channels=16, low_level_index=3)
TINY_CLASSES = 3


def register_tiny() -> None:
    """Make `Architecture('tiny', ...)` valid (also in spawned DDP workers)."""
    SPACES.setdefault("tiny", TINY)


@pytest.fixture
def tiny_space(monkeypatch) -> SearchSpace:
    monkeypatch.setitem(SPACES, "tiny", TINY)
    return TINY


class TinySegmentation(Dataset):
    """Seeded (3, 32, 64) images; the label of a pixel is the channel with the largest value (255
    on a border stripe), so the classes are learnable and the ignore index occurs."""

    def __init__(self, num: int = 16, size: tuple[int, int] = (32, 64), seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        images = torch.randn(num, 3, *size, generator=g)
        # smooth blobs so that context (and hence the architecture) matters
        self.images = torch.nn.functional.avg_pool2d(images, 5, 1, 2) * 3
        self.labels = self.images.argmax(1)
        self.labels[:, :2] = 255

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        flip = torch.rand(()) < 0.5  # augmentation from torch's global generator, like TrainTransform
        x, y = self.images[i], self.labels[i]
        return (x.flip(-1), y.flip(-1)) if flip else (x.clone(), y.clone())
