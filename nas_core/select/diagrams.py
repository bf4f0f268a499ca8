"""Pictures of the architecture choice (paper section 5.3.1 and Figures 8-9): the sampled (cost, mIoU)
points with the estimated front and the choice, and a block diagram of architectures side by side."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from nas_core.io import atomic_path  # noqa: E402
from nas_core.space.spaces import Architecture  # noqa: E402

# (kernel, dilation) -> colour; expansion -> box height; groups = 2 -> hatched; stride 2 -> red edge
KERNEL_COLOURS = {(3, 1): "#4c72b0", (3, 2): "#55a868", (5, 1): "#dd8452"}
EXPANSION_HEIGHT = {1: 0.3, 3: 0.55, 6: 0.85}
DOWNSAMPLE_COLOUR = "#c00000"
SKIP_COLOUR = "#b0b0b0"
# display unit per cost column: (divisor, axis label)
COST_UNITS = {"macs": (1e9, "GMACs"), "params": (1e6, "parameters (M)"), "latency_ms": (1.0, "latency (ms)")}


def _save(fig, path: str | Path, dpi: int) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def plot_pareto(cost: Sequence[float], score: Sequence[float], front: Sequence[bool], chosen: int | None,
                path: str | Path, *, metric: str = "macs", argmax: int | None = 0, target: float | None = None,
                target_label: str = "target", title: str = "", dpi: int = 120) -> None:
    """Scatter of every sample's (cost, mIoU), the front as a step line, the choice starred.

    Args:
        score: class mIoU in [0, 1] (drawn in percent).
        front: mask from `pareto.pareto_front`; chosen, argmax: sample indices (or None).
        target: the cost the choice rule aimed at (a reference network's cost or a budget).
    """
    scale, label = COST_UNITS.get(metric, (1.0, metric))
    x = np.asarray(cost, dtype=np.float64) / scale
    y = np.asarray(score, dtype=np.float64) * 100
    front = np.asarray(front, dtype=bool)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.scatter(x[~front], y[~front], s=14, c="#9a9a9a", alpha=0.7, label=f"samples ({len(x)})")
    order = np.flatnonzero(front)[np.argsort(x[front], kind="stable")]
    ax.step(x[order], y[order], where="post", c="#1f77b4", lw=1.2)
    ax.scatter(x[order], y[order], s=26, c="#1f77b4", label=f"estimated front ({len(order)})", zorder=3)
    if argmax is not None:
        ax.scatter([x[argmax]], [y[argmax]], s=70, marker="^", facecolors="none", edgecolors="k",
                   label="argmax architecture", zorder=4)
    if target is not None:
        ax.axvline(target / scale, ls="--", c="#555555", lw=1, label=f"{target_label} ({target / scale:.4g})")
    if chosen is not None:
        ax.scatter([x[chosen]], [y[chosen]], s=220, marker="*", c=DOWNSAMPLE_COLOUR, edgecolors="k",
                   label=f"chosen: sample {chosen}", zorder=5)
    ax.set_xlabel(label)
    ax.set_ylabel("class mIoU through the supernet (%)")
    ax.set_title(title or f"{len(x)} sampled architectures: mIoU vs {label}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path, dpi)


def block_columns(archs: Sequence[Architecture]) -> list[list[float]]:
    """x position of every block of every architecture, aligned at the downsampling blocks.

    Each architecture is cut into stages: the blocks before its first stride-2 block (maybe none),
    then one stage from each stride-2 block on. Stage k of every row starts at the same x, so the
    k-th downsampling blocks line up, the widest row's stage setting the width (as Figures 8-9).
    """
    stages = []
    for arch in archs:
        cuts = [b.index for b in arch.search_space.blocks if b.stride == 2]
        bounds = [0, *cuts, len(arch.choices)]
        stages.append([bounds[k + 1] - bounds[k] for k in range(len(bounds) - 1)])
    widths = [max(s[k] if k < len(s) else 0 for s in stages) for k in range(max(map(len, stages)))]
    starts = np.concatenate([[0], np.cumsum(np.asarray(widths) + 0.5)])  # half a box between stages
    columns = []
    for lengths in stages:
        cols = []
        for k, n in enumerate(lengths):
            cols += [float(starts[k] + i) for i in range(n)]
        columns.append(cols)
    return columns


def plot_architectures(rows: Sequence[tuple[str, Architecture]], path: str | Path, *, title: str = "",
                       dpi: int = 120) -> None:
    """One row per network, one box per block: colour = kernel/dilation, height = expansion,
    hatched = grouped 1x1 convs, red edge = downsampling block, grey stub = skip."""
    archs = [a for _, a in rows]
    columns = block_columns(archs)
    width = max(c[-1] for c in columns) + 1
    fig, ax = plt.subplots(figsize=(max(8.0, 0.55 * width + 2.5), 0.95 * len(rows) + 1.2))
    for r, ((label, arch), cols) in enumerate(zip(rows, columns)):
        y0 = len(rows) - 1 - r
        ax.text(-0.8, y0, label, ha="right", va="center", fontsize=9)
        for cand, spec, x in zip(arch.candidates, arch.search_space.blocks, cols):
            edge = DOWNSAMPLE_COLOUR if spec.stride == 2 else "k"
            lw = 2.0 if spec.stride == 2 else 0.6
            if cand.is_skip:
                h = 0.12
                ax.add_patch(Rectangle((x - 0.4, y0 - h / 2), 0.8, h, fc=SKIP_COLOUR, ec=edge, lw=lw))
                ax.text(x, y0 + 0.16, "skip", ha="center", va="bottom", fontsize=5.5, color="#666666")
                continue
            h = EXPANSION_HEIGHT[cand.expansion]
            ax.add_patch(Rectangle((x - 0.42, y0 - h / 2), 0.84, h, fc=KERNEL_COLOURS[(cand.kernel, cand.dilation)],
                                   ec=edge, lw=lw, hatch="////" if cand.groups == 2 else None))
            ax.text(x, y0, f"e{cand.expansion}", ha="center", va="center", fontsize=6, color="white")
    legend = [Patch(fc=c, label=f"{k}x{k}" + (f" dilated {d}" if d > 1 else ""))
              for (k, d), c in KERNEL_COLOURS.items()]
    legend += [Patch(fc="white", ec="k", hatch="////", label="groups = 2"),
               Patch(fc="white", ec=DOWNSAMPLE_COLOUR, lw=2, label="downsampling block"),
               Patch(fc=SKIP_COLOUR, label="skip"),
               Patch(fc="white", ec="white", label="height: expansion 1 / 3 / 6")]
    ax.legend(handles=legend, fontsize=7, ncol=len(legend), loc="upper center", bbox_to_anchor=(0.5, -0.02),
              frameon=False)
    ax.set_xlim(-0.7, width)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.axis("off")
    ax.set_title(title or "architectures, aligned at their downsampling blocks", fontsize=10)
    _save(fig, path, dpi)
