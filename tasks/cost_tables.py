"""Task: build and save the MAC/parameter cost table of one search space."""
from __future__ import annotations

from pathlib import Path

from prefect import task

from nas_core.cost.macs import build_cost_table, cost_matrix, write_cost_table


def cost_table_path(out_dir: str | Path, space: str, metric: str = "macs") -> Path:
    return Path(out_dir) / f"{metric}_{space}.parquet"


@task(name="build-cost-table")
def build_cost_table_task(space: str, input_size: tuple[int, int], num_classes: int, out_dir: str) -> dict:
    """Build the table for `space`, write it atomically, return its totals."""
    df = build_cost_table(space, input_size, num_classes)
    path = cost_table_path(out_dir, space)
    write_cost_table(df, path)
    summary = {"path": str(path), "rows": len(df)}
    for metric in ("macs", "params"):
        matrix, fixed = cost_matrix(df, metric)
        summary[f"{metric}_fixed"] = int(fixed)
        summary[f"{metric}_min"] = int(fixed + matrix.min(axis=1).sum())
        summary[f"{metric}_max"] = int(fixed + matrix.max(axis=1).sum())
    return summary
