"""A static segmentation network built from an `Architecture` (paper Figure 1): stem, searched
encoder blocks, optional post-encoder conv, decoder fed by the stride-16 and a low-level feature."""
from __future__ import annotations

import torch
from torch import nn

from nas_core.space.blocks import Block, init_weights
from nas_core.space.decoders import build_decoder
from nas_core.space.encoder import build_post_encoder, build_stem, encode
from nas_core.space.spaces import INPUT_MULTIPLE, NUM_CLASSES, Architecture, SearchSpace


def build_space_decoder(space: SearchSpace, num_classes: int) -> nn.Module:
    return build_decoder(space.decoder, space.encoder_channels, space.low_level_channels,
                         space.decoder_channels, num_classes)


def check_input(x: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a normalized RGB batch (N, 3, H, W), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % INPUT_MULTIPLE or w % INPUT_MULTIPLE:
        raise ValueError(f"input height and width must be multiples of {INPUT_MULTIPLE}, got {h}x{w}")


class SegmentationNetwork(nn.Module):
    """Maps a normalized (N, 3, H, W) batch to (N, classes, H, W) logits."""

    def __init__(self, arch: Architecture, num_classes: int = NUM_CLASSES):
        super().__init__()
        space = arch.search_space
        self.arch = arch
        self.num_classes = num_classes
        self.low_level_index = space.low_level_index
        self.stem = build_stem(space)
        self.blocks = nn.ModuleList(Block(c, spec) for c, spec in zip(arch.candidates, space.blocks))
        self.post_encoder = build_post_encoder(space)
        self.decoder = build_space_decoder(space, num_classes)
        init_weights(self)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stride-16 feature (after the post-encoder conv) and the low-level feature."""
        return encode(x, self.stem, self.blocks, self.post_encoder, self.low_level_index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x)
        feature, low = self.encode(x)
        return self.decoder(feature, low, x.shape[-2:])
