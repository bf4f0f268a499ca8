"""What a latency table times (paper section 5.2): every (block, candidate) at its real input shape
and the fixed parts (stem, post-encoder conv, decoder), each exported to ONNX at batch size 1.

A unit is keyed by the cost table's `shape_key`, so identical shapes are timed once and reused by
every block and space that shares them. Units that run nothing (skip under a residual, the
identity post-encoder of Large/XLarge) are not timed: they cost 0 ms.
"""
from __future__ import annotations

import hashlib
import re
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from torch import nn

from nas_core.space.blocks import Block, init_weights
from nas_core.space.candidates import CANDIDATE_NAMES, Candidate
from nas_core.space.encoder import build_post_encoder, build_stem
from nas_core.space.network import SegmentationNetwork, build_space_decoder
from nas_core.space.spaces import NUM_CLASSES, Architecture, SearchSpace, get_space

OPSET = 17
_EXPORT_LOCK = threading.Lock()


@dataclass(frozen=True)
class Unit:
    """One module to time at fixed input shapes (batch 1), named by its shape key."""

    key: str
    inputs: tuple[tuple[int, ...], ...]
    build: Callable[[], nn.Module] = field(compare=False, repr=False)


class _DecoderUnit(nn.Module):
    """The decoder with its output size fixed, so it exports as a two-input graph."""

    def __init__(self, decoder: nn.Module, size: tuple[int, int]):
        super().__init__()
        self.decoder = decoder
        self.size = size

    def forward(self, feature: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        return self.decoder(feature, low, self.size)


def is_zero_cost(row, space: SearchSpace) -> bool:
    """The row's module runs nothing: skip under a residual, or the identity post-encoder."""
    if row.kind == "block":
        return row.candidate == "skip" and bool(row.residual)
    return row.candidate == "post_encoder" and space.post_encoder_channels is None


def _initialised(module: nn.Module) -> nn.Module:
    init_weights(module)
    return module.eval()


def table_units(df: pd.DataFrame, space: str | SearchSpace) -> list[Unit]:
    """The distinct units of a cost table (one per shape_key that runs something), in table order."""
    space = get_space(space)
    H, W = int(df["input_h"].iloc[0]), int(df["input_w"].iloc[0])
    num_classes = int(df["num_classes"].iloc[0])
    low = df[(df["kind"] == "block") & (df["block"] == space.low_level_index)].iloc[0]
    units, seen = [], set()
    for row in df.itertuples(index=False):
        if row.shape_key in seen or is_zero_cost(row, space):
            continue
        seen.add(row.shape_key)
        x = (1, int(row.c_in), int(row.in_h), int(row.in_w))
        if row.kind == "block":
            cand, spec = Candidate.parse(row.candidate), space.blocks[int(row.block)]
            units.append(Unit(row.shape_key, (x,), lambda c=cand, s=spec: _initialised(Block(c, s))))
        elif row.candidate == "stem":
            units.append(Unit(row.shape_key, (x,), lambda: _initialised(build_stem(space))))
        elif row.candidate == "post_encoder":
            units.append(Unit(row.shape_key, (x,), lambda: _initialised(build_post_encoder(space))))
        else:  # decoder: the stride-16 feature plus the low-level feature
            lo = (1, space.low_level_channels, int(low.out_h), int(low.out_w))
            units.append(Unit(row.shape_key, (x, lo), lambda: _initialised(
                _DecoderUnit(build_space_decoder(space, num_classes), (H, W)))))
    return units


def network_key(arch: Architecture, input_size: tuple[int, int], num_classes: int) -> str:
    """A compact key for a whole network: one base-13 digit (0-9, a-c) per block."""
    digits = "".join("0123456789abc"[CANDIDATE_NAMES.index(c)] for c in arch.choices)
    return f"net:{arch.space}:{digits}:{input_size[0]}x{input_size[1]}:n{num_classes}"


def network_unit(arch: Architecture, input_size: tuple[int, int], num_classes: int = NUM_CLASSES) -> Unit:
    """The whole static network of `arch`, timed end to end for the fidelity check."""
    return Unit(network_key(arch, input_size, num_classes), ((1, 3, *input_size),),
                lambda: SegmentationNetwork(arch, num_classes).eval())


def onnx_filename(key: str) -> str:
    """A file name for `key` that is safe on any filesystem and unique (a hash of the key)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[:80]
    return f"{stem}-{hashlib.sha1(key.encode()).hexdigest()[:10]}.onnx"


def export_onnx(unit: Unit, path: str | Path, opset: int = OPSET) -> Path:
    """Export `unit` (random seeded weights, eval mode) to `path` atomically; returns the path."""
    from nas_core.io import atomic_path

    # the seed, the thread count and the exporter's own flags are process-wide: several devices'
    # jobs in one process (thread runner) export one at a time
    with _EXPORT_LOCK:
        torch.manual_seed(0)
        module = unit.build()
        args = tuple(torch.randn(*shape) for shape in unit.inputs)
        names = [f"x{i}" for i in range(len(unit.inputs))]
        threads = torch.get_num_threads()
        # tracing runs one forward pass; a single thread is 3-4x faster than two fighting on a busy CPU
        torch.set_num_threads(1)
        try:
            with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
                # the TorchScript exporter is deprecated in favour of dynamo=True, which needs onnxscript
                warnings.simplefilter("ignore")
                torch.onnx.export(module, args, str(tmp), dynamo=False, opset_version=opset,
                                  input_names=names, output_names=["y"], do_constant_folding=True)
        finally:
            torch.set_num_threads(threads)
    return Path(path)
