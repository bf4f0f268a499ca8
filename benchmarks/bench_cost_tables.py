"""Cost tables for all three spaces at 1024x2048: analytic shape propagation vs counting by hooks.

The alternative it is compared with runs every candidate module at its real input shape on the
meta device (no activations allocated either) and counts convolution MACs with forward hooks.
Usage: python benchmarks/bench_cost_tables.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from nas_core.cost.macs import build_cost_table
from nas_core.space.blocks import build_candidate
from nas_core.space.candidates import CANDIDATES
from nas_core.space.spaces import SPACES


def analytic() -> int:
    return sum(len(build_cost_table(s, (1024, 2048), 19)) for s in SPACES)


def by_hooks() -> int:
    rows = 0
    for space in SPACES.values():
        table = build_cost_table(space, (1024, 2048), 19)  # only for the input shapes
        shapes = table[table["kind"] == "block"].groupby("block")[["in_h", "in_w"]].first()
        for spec in space.blocks:
            h, w = shapes.loc[spec.index]
            for cand in CANDIDATES:
                with torch.device("meta"):
                    op = build_candidate(cand, spec)
                macs = 0
                if op is not None:
                    def hook(m, i, o):
                        nonlocal macs
                        macs += o.numel() * m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
                    hs = [m.register_forward_hook(hook) for m in op.modules() if isinstance(m, nn.Conv2d)]
                    op(torch.empty(1, spec.c_in, int(h), int(w), device="meta"))
                    for hd in hs:
                        hd.remove()
                rows += 1
    return rows


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rows = analytic()
    t_analytic = best_of(analytic, args.repeats)
    t_hooks = best_of(by_hooks, max(1, args.repeats // 2))
    print(f"rows: {rows} (3 spaces x blocks x 13 candidates + fixed parts) at 1024x2048")
    print(f"analytic build, all three spaces: {t_analytic * 1e3:.1f} ms")
    print(f"meta-device hook counting:        {t_hooks * 1e3:.1f} ms")
    print(f"ratio hooks / analytic:           {t_hooks / t_analytic:.1f}x")


if __name__ == "__main__":
    main()
