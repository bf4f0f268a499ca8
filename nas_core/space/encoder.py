"""The encoder walk of every network of a space (paper Figure 1): stem, the searched blocks in order, the
post-encoder conv, and the low-level feature the decoder's skip branch takes. The static network, its
classifier twin and the supernet build the same stem and post-encoder and walk their blocks with `encode`."""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from nas_core.space.blocks import ConvBN
from nas_core.space.spaces import SearchSpace

Layer = Callable[[torch.Tensor], torch.Tensor]


def build_stem(space: SearchSpace) -> nn.Module:
    return ConvBN(3, space.stem_channels, 3, stride=2)


def build_post_encoder(space: SearchSpace) -> nn.Module:
    if space.post_encoder_channels is None:
        return nn.Identity()
    return ConvBN(space.groups[-1][0], space.post_encoder_channels, 1)


def encode(x: torch.Tensor, stem: Layer, blocks: Iterable[Layer], post_encoder: Layer,
           low_level_index: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the encoder on a normalized (N, 3, H, W) batch.

    Args:
        blocks: one callable per block position, in order (a static `Block`, or a supernet's superblock
            bound to its mixing weights or to one candidate).
        low_level_index: the block whose output is the low-level feature (None: a classifier has none).
    Returns:
        the stride-16 feature after the post-encoder conv, and the low-level feature (the stem's output
        when `low_level_index` names no block).
    """
    x = stem(x)  # (N, C0, H/2, W/2)
    low = x
    for i, block in enumerate(blocks):
        x = block(x)
        if i == low_level_index:
            low = x
    return post_encoder(x), low  # (N, C, H/16, W/16)
