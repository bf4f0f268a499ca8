"""Cost tables C(i, j) of the resource-aware loss (paper section 4.3, eq. 3).

One row per (block, candidate) plus one row per fixed part (stem, post-encoder conv, decoder).
MACs follow the paper's convention: multiply-accumulates of convolution layers only, i.e. output
elements x kernel area x input channels / groups. Shapes are propagated analytically, so a table
for 1024x2048 costs microseconds and allocates no activations.

Schema (version `SCHEMA_VERSION`), shared by MAC and latency tables:
  schema_version, space, kind ("block" | "fixed"), block (-1 for fixed rows),
  candidate (candidate name, or the fixed part: "stem", "post_encoder", "decoder"),
  c_in, c_out, stride, kernel, dilation, expansion, groups, residual,
  in_h, in_w, out_h, out_w, input_h, input_w, num_classes, shape_key,
  and metric columns: macs, params (int64) and, in latency tables, latency_ms,
  latency_p10_ms, latency_p90_ms, runs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from nas_core.io import atomic_write_parquet, read_parquet
from nas_core.space.candidates import CANDIDATE_NAMES, CANDIDATES, Candidate
from nas_core.space.decoders import lraspp_pool_geometry
from nas_core.space.spaces import NUM_CLASSES, Architecture, BlockSpec, SearchSpace, get_space

SCHEMA_VERSION = 1
FIXED_PARTS = ("stem", "post_encoder", "decoder")
KEY_COLUMNS = ["schema_version", "space", "kind", "block", "candidate", "c_in", "c_out", "stride",
               "kernel", "dilation", "expansion", "groups", "residual", "in_h", "in_w", "out_h",
               "out_w", "input_h", "input_w", "num_classes", "shape_key"]
METRICS = ("macs", "params", "latency_ms")


def conv_out(size: int, kernel: int, stride: int = 1, dilation: int = 1, padding: int | None = None) -> int:
    if padding is None:
        padding = dilation * (kernel - 1) // 2
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


class _Counter:
    """Accumulates MACs and parameters of convolution (and BN) layers."""

    def __init__(self) -> None:
        self.macs = 0
        self.params = 0

    def conv(self, c_in: int, c_out: int, out_hw: tuple[int, int], kernel: int | tuple[int, int] = 1,
             groups: int = 1, bias: bool = False) -> None:
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.macs += c_out * out_hw[0] * out_hw[1] * kh * kw * (c_in // groups)
        self.params += c_out * kh * kw * (c_in // groups) + (c_out if bias else 0)

    def bn(self, channels: int) -> None:
        self.params += 2 * channels

    def conv_bn(self, c_in: int, c_out: int, out_hw: tuple[int, int], kernel: int | tuple[int, int] = 1,
                groups: int = 1) -> None:
        """A bias-free conv followed by BatchNorm over its outputs: the unit nearly every layer here is built of."""
        self.conv(c_in, c_out, out_hw, kernel, groups)
        self.bn(c_out)


def candidate_cost(cand: Candidate, spec: BlockSpec, in_hw: tuple[int, int]) -> tuple[int, int, tuple[int, int]]:
    """(MACs, params, output size) of candidate `cand` at block `spec` on an in_hw input."""
    h, w = in_hw
    out = (conv_out(h, 1, spec.stride, padding=0), conv_out(w, 1, spec.stride, padding=0)) \
        if spec.stride > 1 else (h, w)
    c = _Counter()
    if not cand.is_skip:
        hidden = spec.c_in * cand.expansion
        c.conv_bn(spec.c_in, hidden, (h, w), 1, cand.groups)
        out = (conv_out(h, cand.kernel, spec.stride, cand.dilation),
               conv_out(w, cand.kernel, spec.stride, cand.dilation))
        c.conv_bn(hidden, hidden, out, cand.kernel, hidden)
        c.conv_bn(hidden, spec.c_out, out, 1, cand.groups)
    elif spec.residual:
        pass  # the candidate contributes zero: no layer at all
    elif spec.stride == 2:  # factorized reduce: the second conv sees the input shifted by one pixel
        c.conv(spec.c_in, spec.c_out // 2, out)
        c.conv(spec.c_in, spec.c_out // 2, (conv_out(h - 1, 1, 2, padding=0), conv_out(w - 1, 1, 2, padding=0)))
        c.bn(spec.c_out)
    else:
        c.conv_bn(spec.c_in, spec.c_out, out)
    return c.macs, c.params, out


def _decoder_cost(space: SearchSpace, num_classes: int, f_hw: tuple[int, int], low_hw: tuple[int, int]) -> _Counter:
    c, mid, cin, low = _Counter(), space.decoder_channels, space.encoder_channels, space.low_level_channels
    if space.decoder == "lraspp":
        c.conv_bn(cin, mid, f_hw)
        (kh, kw), (sh, sw) = lraspp_pool_geometry(*f_hw)
        c.conv(cin, mid, ((f_hw[0] - kh) // sh + 1, (f_hw[1] - kw) // sw + 1), bias=True)
        up = (2 * f_hw[0], 2 * f_hw[1])
        c.conv(mid, num_classes, up, bias=True)
        c.conv(low, num_classes, low_hw, bias=True)
    else:
        c.conv_bn(cin, mid, f_hw)
        for _ in range(3):
            c.conv_bn(cin, mid, f_hw, 3, groups=mid)
        c.conv_bn(4 * mid + cin, mid, f_hw)
        c.conv(low, low, low_hw, bias=True)
        fused = mid + low
        c.conv_bn(fused, fused, low_hw, 3, groups=fused)
        c.conv(fused, num_classes, low_hw, bias=True)
    return c


def shape_key(kind: str, cand: str, spec: BlockSpec | None, in_hw: tuple[int, int], extra: str = "") -> str:
    """A key naming everything a measurement depends on, so tables can be shared across spaces."""
    if spec is None:
        return f"{kind}:{cand}:{in_hw[0]}x{in_hw[1]}{extra}"
    return (f"{cand}:cin{spec.c_in}:cout{spec.c_out}:s{spec.stride}:res{int(spec.residual)}"
            f":{in_hw[0]}x{in_hw[1]}")


def build_cost_table(space: str | SearchSpace, input_size: tuple[int, int] = (1024, 2048),
                     num_classes: int = NUM_CLASSES) -> pd.DataFrame:
    """MACs and parameters of every (block, candidate) and of the fixed parts, at batch size 1."""
    space = get_space(space)
    H, W = input_size
    rows = []

    def row(kind, block, cand_name, c_in, c_out, stride, in_hw, out_hw, macs, params, cand=None, spec=None):
        cand = cand or Candidate()
        rows.append(dict(
            schema_version=SCHEMA_VERSION, space=space.name, kind=kind, block=block, candidate=cand_name,
            c_in=c_in, c_out=c_out, stride=stride, kernel=cand.kernel, dilation=cand.dilation,
            expansion=cand.expansion, groups=cand.groups, residual=bool(spec.residual) if spec else False,
            in_h=in_hw[0], in_w=in_hw[1], out_h=out_hw[0], out_w=out_hw[1], input_h=H, input_w=W,
            num_classes=num_classes,
            shape_key=shape_key(kind, cand_name, spec, in_hw, "" if spec else f":{space.name}:n{num_classes}"),
            macs=macs, params=params))

    stem = _Counter()
    hw = (conv_out(H, 3, 2), conv_out(W, 3, 2))
    stem.conv_bn(3, space.stem_channels, hw, 3)
    row("fixed", -1, "stem", 3, space.stem_channels, 2, (H, W), hw, stem.macs, stem.params)

    low_hw = hw
    for spec in space.blocks:
        out_hw = None
        for cand in CANDIDATES:
            macs, params, out_hw = candidate_cost(cand, spec, hw)
            row("block", spec.index, cand.name, spec.c_in, spec.c_out, spec.stride, hw, out_hw,
                macs, params, cand, spec)
        hw = out_hw
        if spec.index == space.low_level_index:
            low_hw = hw

    post = _Counter()
    if space.post_encoder_channels:
        post.conv_bn(space.groups[-1][0], space.post_encoder_channels, hw)
    row("fixed", -1, "post_encoder", space.groups[-1][0], space.encoder_channels, 1, hw, hw, post.macs, post.params)
    dec = _decoder_cost(space, num_classes, hw, low_hw)
    row("fixed", -1, "decoder", space.encoder_channels, num_classes, 1, hw, (H, W), dec.macs, dec.params)

    df = pd.DataFrame(rows)
    return df.astype({"macs": "int64", "params": "int64"})


def write_cost_table(df: pd.DataFrame, path: str | Path) -> None:
    validate_cost_table(df, str(path))
    atomic_write_parquet(path, df, {"squeezenas.schema_version": SCHEMA_VERSION})


def read_cost_table(path: str | Path) -> pd.DataFrame:
    """Read and validate a cost table; errors name the file and the problem."""
    df = read_parquet(path, "cost table")
    validate_cost_table(df, str(path))
    return df


def validate_cost_table(df: pd.DataFrame, where: str = "cost table") -> None:
    missing = [c for c in KEY_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {', '.join(missing)}")
    if not any(m in df.columns for m in METRICS):
        raise ValueError(f"{where}: no metric column; expected one of {', '.join(METRICS)}")
    versions = set(df["schema_version"].unique().tolist())
    if versions != {SCHEMA_VERSION}:
        raise ValueError(f"{where}: schema_version {sorted(versions)} is not the supported {SCHEMA_VERSION}")
    spaces = df["space"].unique().tolist()
    if len(spaces) != 1:
        raise ValueError(f"{where}: one space per table, found {spaces}")
    space = get_space(spaces[0])
    blocks = df[df["kind"] == "block"]
    counts = blocks.groupby(["block", "candidate"]).size()
    if (counts > 1).any():
        raise ValueError(f"{where}: duplicate rows for {counts[counts > 1].index.tolist()[:5]}")
    expected = {(b, c) for b in range(space.num_blocks) for c in CANDIDATE_NAMES}
    absent = expected - set(counts.index.tolist())
    if absent:
        raise ValueError(f"{where}: {len(absent)} (block, candidate) rows missing, e.g. {sorted(absent)[:3]}")
    fixed = set(df.loc[df["kind"] == "fixed", "candidate"])
    if fixed != set(FIXED_PARTS):
        raise ValueError(f"{where}: fixed rows must be {', '.join(FIXED_PARTS)}, found {sorted(fixed)}")


def cost_matrix(df: pd.DataFrame, metric: str = "macs") -> tuple[np.ndarray, float]:
    """C as a (num_blocks, 13) array in candidate-column order, and the fixed parts' total."""
    if metric not in df.columns:
        raise ValueError(f"cost table has no {metric!r} column; it has {[m for m in METRICS if m in df.columns]}")
    blocks = df[df["kind"] == "block"]
    pivot = blocks.pivot(index="block", columns="candidate", values=metric)[list(CANDIDATE_NAMES)]
    fixed = float(df.loc[df["kind"] == "fixed", metric].sum())
    return pivot.sort_index().to_numpy(dtype=np.float64), fixed


def architecture_cost(df: pd.DataFrame, arch: Architecture, metric: str = "macs") -> float:
    """The cost of `arch`: the sum of its rows plus the fixed rows."""
    if df["space"].iloc[0] != arch.space:
        raise ValueError(f"the cost table is for the {df['space'].iloc[0]} space, the architecture for {arch.space}")
    matrix, fixed = cost_matrix(df, metric)
    cols = [CANDIDATE_NAMES.index(c) for c in arch.choices]
    total = fixed + float(matrix[np.arange(len(cols)), cols].sum())
    return int(total) if metric in ("macs", "params") else total
