"""Flow of the DVC stage `search` (paper sections 4.1-4.3): the supernet search on the training set
with the configured cost table, per-epoch metrics and the theta plots in one MLflow run."""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from nas_core.config import load_params
from tasks import tracking
from tasks.dvc_files import METRICS
from tasks.flowruns import untagged_task_runs
from tasks.search import CURVES, HISTORY, PLOT, PRUNING, THETA, search_task

NON_METRICS = ("epoch", "space", "cost_table", "cost_metric", "architecture", "resumed_from")


def _numbers(d: dict) -> dict[str, float]:
    return {k: float(v) for k, v in d.items()
            if k not in NON_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)}


@flow(name="search")
@untagged_task_runs
def search_flow(params_file: str = "params.yaml", overrides: tuple[str, ...] = (),
                experiment: str | None = None) -> dict:
    params = load_params(params_file, overrides, experiment)
    cfg, paths = params.search, params.paths
    out = Path(paths.search)
    with tracking.stage_run(params.tracking, params.dvc_stage("search"), params=cfg.model_dump(mode="json"),
                            tags={"squeezenas.space": cfg.space, "squeezenas.cost_metric": cfg.cost_metric}):
        summary = search_task(cfg, paths.dataset, str(out),
                              on_epoch_end=lambda epoch, m: tracking.log_metrics(_numbers(m), step=epoch),
                              data_format=params.data.format)
        tracking.log_metrics({f"final_{k}": v for k, v in _numbers(summary).items()})
        for name in (THETA, HISTORY, PRUNING, CURVES, PLOT, METRICS):
            tracking.log_artifact(out / name, "search")
    print(f"[search] {cfg.space}, {cfg.cost_metric}, alpha {cfg.alpha}: expected cost {summary['expected_cost']:.4g} "
          f"(fixed {summary['fixed_cost']:.4g}), argmax mIoU {summary['argmax_class_miou']:.3f} -> {out}")
    print(f"[search] argmax architecture: {' '.join(summary['architecture'])}")
    return summary
