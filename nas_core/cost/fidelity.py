"""Does the latency table predict real latency? (paper section 4.3 models each block's cost as
independent of the others; this measures how true that is on the target.)

Metrics follow nn-Meter (Zhang et al., MobiSys 2021): RMSE, RMSPE and the share of networks
predicted within +-10% of their measured latency; plus Kendall's tau (does the table rank
networks correctly, which is what the search needs) and the mean absolute percentage error.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from nas_core.cost.macs import architecture_cost
from nas_core.space.candidates import CANDIDATE_NAMES
from nas_core.space.spaces import Architecture, SearchSpace, get_space


def uniform_architectures(space: str | SearchSpace, k: int, seed: int = 0) -> list[Architecture]:
    """`k` architectures drawn uniformly (each block's candidate independently), seeded."""
    space = get_space(space)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(CANDIDATE_NAMES), size=(k, space.num_blocks))
    return [Architecture(space.name, [CANDIDATE_NAMES[j] for j in row]) for row in picks]


def spread_architectures(space: str | SearchSpace, k: int, seed: int = 0, max_skip: float = 0.75
                         ) -> list[Architecture]:
    """`k` architectures spread from the dearest to the cheapest a search reaches, seeded: network n
    takes `skip` in each block with probability max_skip * n / (k - 1), else a candidate drawn
    uniformly from the others. Uniform draws (about 1/13 skip) crowd in the middle of the cost range,
    while a search drifts to cheap, skip-heavy networks: a latency model fitted on uniform networks
    extrapolates there (the default run of 2026-12-07: -35% on the chosen Large networks)."""
    space = get_space(space)
    rng = np.random.default_rng(seed)
    skip = CANDIDATE_NAMES.index("skip")
    others = [j for j in range(len(CANDIDATE_NAMES)) if j != skip]
    archs = []
    for n in range(k):
        p = max_skip * n / max(k - 1, 1)
        row = [skip if rng.random() < p else others[rng.integers(len(others))] for _ in range(space.num_blocks)]
        archs.append(Architecture(space.name, [CANDIDATE_NAMES[j] for j in row]))
    return archs


def fidelity_metrics(predicted, measured) -> dict[str, float]:
    """Agreement of predicted and measured latencies (same units, measured > 0)."""
    p, m = np.asarray(predicted, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    if p.shape != m.shape or p.ndim != 1 or len(p) < 2:
        raise ValueError(f"need two equal-length lists of at least 2 latencies, got {p.shape} and {m.shape}")
    if (m <= 0).any():
        raise ValueError("measured latencies must be positive")
    rel = (p - m) / m
    tau = kendalltau(p, m).statistic
    return {"n": int(len(p)), "kendall_tau": float(tau), "mape": float(np.abs(rel).mean()),
            "rmse_ms": float(np.sqrt(((p - m) ** 2).mean())), "rmspe": float(np.sqrt((rel ** 2).mean())),
            "within_10pct": float((np.abs(rel) <= 0.10).mean()), "mean_bias": float(rel.mean()),
            "measured_min_ms": float(m.min()), "measured_max_ms": float(m.max())}


def predicted_latencies(table: pd.DataFrame, archs: list[Architecture]) -> list[float]:
    """The table's prediction for each architecture: its rows plus the fixed parts."""
    return [architecture_cost(table, a, "latency_ms") for a in archs]


def placeholder_plot(path: str | Path, text: str) -> None:
    """A PNG saying why there is no scatter plot (the stage's output must exist)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nas_core.io import atomic_path

    fig, ax = plt.subplots(figsize=(5, 2), dpi=100)
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def scatter_plot(predicted, measured, path: str | Path, title: str = "") -> None:
    """Predicted vs measured latency with the +-10% band, written atomically as PNG. `predicted`: one
    list, or {name: list} to put several predictors (the table, the model) side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nas_core.io import atomic_path

    series = predicted if isinstance(predicted, dict) else {"latency table": predicted}
    series = {name: np.asarray(p, dtype=np.float64) for name, p in series.items()}
    m = np.asarray(measured, dtype=np.float64)
    lo = 0.95 * min(m.min(), *(p.min() for p in series.values()))
    hi = 1.05 * max(m.max(), *(p.max() for p in series.values()))
    fig, ax = plt.subplots(figsize=(5.5, 5.5), dpi=100)
    line = np.linspace(lo, hi, 2)
    ax.plot(line, line, "k-", lw=1, label="prediction = measurement")
    ax.fill_between(line, 0.9 * line, 1.1 * line, color="tab:green", alpha=0.15, label="within +-10%")
    lines = [title] if title else []
    for (name, p), color, marker in zip(series.items(), ("tab:blue", "tab:orange", "tab:red"), "o^s"):
        metrics = fidelity_metrics(p, m)
        ax.scatter(m, p, s=18, color=color, marker=marker, zorder=3, alpha=0.8, label=name)
        lines.append(f"{name}: Kendall tau {metrics['kendall_tau']:.3f}, within 10% "
                     f"{100 * metrics['within_10pct']:.0f}%, MAPE {100 * metrics['mape']:.1f}%")
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="measured end-to-end latency (ms)", ylabel="predicted latency (ms)")
    ax.set_title("\n".join(lines), fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
