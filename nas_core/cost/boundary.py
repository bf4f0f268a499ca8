"""Transition costs at unit edges: why a table of units timed alone over-predicts a network (the
paper's section 4.3 assumes block costs add up), and the measured correction.

A unit timed alone pays at its input and output what the same layers inside a network do not:
the runtime's per-call overhead and layout conversions (onnxruntime's NCHWc reorders on x86 cost
about 0.05 ms for a 16x64x128 tensor, as much as a small block). They are measured on the target
per tensor shape s with two probes, one and two chained 1x1 depthwise convolutions:
boundary(s) = 2 T1(s) - T2(s), in which the convolution cancels. Each internal edge of a unit
then gives back half the boundary of its shape (the other half belongs to the neighbour on the
other side of the edge); the network's own input and output keep theirs. The half call overhead
this leaves out (microseconds) is ignored.

Off by default (latency.edge_correction): it assumes a network keeps its internal layout across
every junction. Measured on a 2-core AVX2 EPYC with onnxruntime 'all', a network converts layout
at many junctions too (residual Adds and grouped 1x1 convs run in NCHW there), so removing every
edge over-corrects (-11% mean bias instead of -2%); with 'extended', which makes no layout
changes, edges cost only the call overhead and the table is additive without it.
"""
from __future__ import annotations

import pandas as pd
from torch import nn

from nas_core.cost.export import Unit, is_zero_cost
from nas_core.space.spaces import get_space

Shape = tuple[int, int, int]  # (C, H, W) at batch 1


class _Probe(nn.Module):
    """`n` chained per-channel 1x1 convolutions: almost no work, all the edge costs."""

    def __init__(self, channels: int, n: int):
        super().__init__()
        self.convs = nn.Sequential(*[nn.Conv2d(channels, channels, 1, groups=channels) for _ in range(n)])

    def forward(self, x):
        return self.convs(x)


def probe_key(n: int, shape: Shape) -> str:
    return f"probe{n}:{shape[0]}x{shape[1]}x{shape[2]}"


def edges(df: pd.DataFrame) -> list[list[Shape]]:
    """For each row, the shapes of its internal edges: where it meets another unit in a network."""
    space = get_space(df["space"].iloc[0])
    low = df[(df["kind"] == "block") & (df["block"] == space.low_level_index)].iloc[0]
    low_shape = (int(low.c_out), int(low.out_h), int(low.out_w))
    out = []
    for row in df.itertuples(index=False):
        x, y = (int(row.c_in), int(row.in_h), int(row.in_w)), (int(row.c_out), int(row.out_h), int(row.out_w))
        if is_zero_cost(row, space):
            out.append([])
        elif row.candidate == "stem":
            out.append([y])  # its input is the network's input
        elif row.candidate == "decoder":
            out.append([x, low_shape])  # its output is the network's output
        else:
            out.append([x, y])
    return out


def probe_units(df: pd.DataFrame) -> list[Unit]:
    """The probes of every edge shape of a table (two per shape)."""
    shapes = sorted({s for row in edges(df) for s in row})
    return [Unit(probe_key(n, s), ((1, *s),), lambda s=s, n=n: _Probe(s[0], n).eval())
            for s in shapes for n in (1, 2)]


def boundary_ms(records: dict[str, dict], shape: Shape) -> float:
    """Measured edge cost of a tensor of `shape` (clipped at 0: noise can make 2 T1 - T2 negative)."""
    t1, t2 = records[probe_key(1, shape)]["latency_ms"], records[probe_key(2, shape)]["latency_ms"]
    return max(0.0, 2 * t1 - t2)


def remove_edge_costs(df: pd.DataFrame, records: dict[str, dict]) -> pd.DataFrame:
    """Subtract half an edge cost per internal edge; keeps the measurement as `latency_raw_ms` and
    the amount removed as `boundary_ms`. Entries never go below zero."""
    df = df.copy()
    removed = [0.5 * sum(boundary_ms(records, s) for s in row) for row in edges(df)]
    df["latency_raw_ms"] = df["latency_ms"]
    df["boundary_ms"] = pd.Series(removed, index=df.index).clip(upper=df["latency_ms"])
    for col in ("latency_ms", "latency_p10_ms", "latency_p90_ms"):
        df[col] = (df[col] - df["boundary_ms"]).clip(lower=0.0)
    return df
