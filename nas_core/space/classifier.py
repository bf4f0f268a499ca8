"""The ImageNet pretraining model (paper section 5.3.2): the segmentation network's encoder (stem,
searched blocks, post-encoder conv) with a classification head, and the transfer of encoder weights
between the stages' models."""
from __future__ import annotations

import torch
from torch import nn

from nas_core.space.blocks import Block, init_weights
from nas_core.space.encoder import build_post_encoder, build_stem, encode
from nas_core.space.spaces import Architecture

# the parameter names the encoder has in both Classifier and SegmentationNetwork
ENCODER_PREFIXES = ("stem.", "blocks.", "post_encoder.")


class Classifier(nn.Module):
    """Maps a normalized (N, 3, S, S) batch to (N, classes) logits: encoder, global average pool, linear."""

    def __init__(self, arch: Architecture, num_classes: int):
        super().__init__()
        space = arch.search_space
        self.arch = arch
        self.num_classes = num_classes
        self.stem = build_stem(space)
        self.blocks = nn.ModuleList(Block(c, spec) for c, spec in zip(arch.candidates, space.blocks))
        self.post_encoder = build_post_encoder(space)
        self.head = nn.Linear(space.encoder_channels, num_classes)
        init_weights(self)
        nn.init.normal_(self.head.weight, std=0.01)  # ResNet's init of the last layer
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature, _ = encode(x, self.stem, self.blocks, self.post_encoder)  # (N, C, S/16, S/16)
        return self.head(feature.mean((2, 3)))  # (N, classes)


def encoder_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's entries of `model`'s state dict (a Classifier or a SegmentationNetwork)."""
    return {k: v for k, v in model.state_dict().items() if k.startswith(ENCODER_PREFIXES)}


def load_encoder(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> int:
    """Copy the encoder entries of `state` into `model`; every encoder tensor must be present and fit.

    Returns:
        the number of tensors copied.
    Raises:
        ValueError naming `source` and the first missing, unexpected or mis-shaped keys.
    """
    ours = encoder_state_dict(model)
    theirs = {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIXES)}
    missing = sorted(set(ours) - set(theirs))
    unexpected = sorted(set(theirs) - set(ours))
    shapes = [k for k in set(ours) & set(theirs) if ours[k].shape != theirs[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"{source}: its encoder does not fit this architecture (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}, other shapes {sorted(shapes)[:3]})")
    model.load_state_dict(theirs, strict=False)
    return len(theirs)
