"""The picture of a search (paper sections 4.1-4.2): p(i, j | theta) of every block over the epochs,
one small heatmap per block, pruned candidates crossed out."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from nas_core.io import atomic_path
from nas_core.space.candidates import CANDIDATE_NAMES


def probability_cube(history: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(blocks, 13, epochs) probabilities and live flags from a theta history, and the epochs."""
    epochs = sorted(history["epoch"].unique().tolist())
    blocks = int(history["block"].max()) + 1
    probs = np.zeros((blocks, len(CANDIDATE_NAMES), len(epochs)))
    live = np.zeros_like(probs, dtype=bool)
    col = {name: j for j, name in enumerate(CANDIDATE_NAMES)}
    pos = {e: k for k, e in enumerate(epochs)}
    for row in history.itertuples(index=False):
        probs[row.block, col[row.candidate], pos[row.epoch]] = row.probability
        live[row.block, col[row.candidate], pos[row.epoch]] = row.live
    return probs, live, epochs


def plot_probabilities(history: pd.DataFrame, path: str | Path, title: str = "") -> None:
    """Write a PNG: for each block, candidates (rows) x epochs (columns), colour = probability."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    probs, live, epochs = probability_cube(history)
    blocks = probs.shape[0]
    cols = min(blocks, 6)
    rows = math.ceil(blocks / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols + 1.6, 2.4 * rows + 0.8), squeeze=False,
                             sharex=True, sharey=True)
    image = None
    for b, ax in enumerate(axes.flat):
        if b >= blocks:
            ax.axis("off")
            continue
        image = ax.imshow(probs[b], aspect="auto", vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
        dead = np.argwhere(~live[b])
        ax.scatter(dead[:, 1], dead[:, 0], marker="x", s=8, c="red", linewidths=0.6)
        ax.set_title(f"block {b}", fontsize=8)
        ax.set_yticks(range(len(CANDIDATE_NAMES)), CANDIDATE_NAMES, fontsize=5)
        ax.set_xticks(range(len(epochs)), [str(e) for e in epochs], fontsize=5)
    for ax in axes[-1]:
        ax.set_xlabel("epoch", fontsize=7)
    fig.suptitle(title or "p(i, j | theta) per block over the search (x: pruned)", fontsize=10)
    fig.colorbar(image, ax=axes, shrink=0.6, label="probability")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
