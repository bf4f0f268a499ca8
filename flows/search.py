"""Flow of the DVC stage `search` (paper sections 4.1-4.3): the supernet search on the training set
with the configured cost table, per-epoch metrics and the theta plots in one MLflow run.

Across machines (search.nnodes > 1) every node runs this flow (the same command); the rendezvous decides
which node's worker is rank 0, so the MLflow run is opened after the search, by that node's command alone
(it replays the per-epoch metrics), and the other nodes' flow runs end without outputs or an MLflow run."""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from nas_core.config import load_params
from tasks import tracking
from tasks.dvc_files import METRICS
from tasks.flowruns import untagged_task_runs
from tasks.search import CURVES, HISTORY, PLOT, PRUNING, THETA, replay_curves, search_task

NON_METRICS = ("epoch", "space", "cost_table", "cost_metric", "architecture", "resumed_from")


def _numbers(d: dict) -> dict[str, float]:
    return {k: float(v) for k, v in d.items()
            if k not in NON_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _log_epoch(epoch: int, metrics: dict) -> None:
    tracking.log_metrics(_numbers(metrics), step=epoch)


@flow(name="search")
@untagged_task_runs
def search_flow(params_file: str = "params.yaml", overrides: tuple[str, ...] = (),
                experiment: str | None = None) -> dict:
    params = load_params(params_file, overrides, experiment)
    cfg, paths = params.search, params.paths
    out = Path(paths.search)
    run = lambda: tracking.stage_run(  # noqa: E731
        params.tracking, params.dvc_stage("search"), params=cfg.model_dump(mode="json"),
        tags={"squeezenas.space": cfg.space, "squeezenas.cost_metric": cfg.cost_metric})
    if cfg.nnodes == 1:
        with run():
            summary = search_task(cfg, paths.dataset, str(out), on_epoch_end=_log_epoch,
                                  data_format=params.data.format)
            _log_summary(summary, out)
    else:
        summary = search_task(cfg, paths.dataset, str(out), data_format=params.data.format)
        if summary is None:
            print(f"[search] this node's workers are done; rank 0 ran on another node of {cfg.nnodes}: its command "
                  f"wrote {out} and logs the MLflow run")
            return {"main_node": False, "nnodes": cfg.nnodes}
        with run():
            replay_curves(str(out), _log_epoch)
            _log_summary(summary, out)
    print(f"[search] {cfg.space}, {cfg.cost_metric}, alpha {cfg.alpha}: expected cost {summary['expected_cost']:.4g} "
          f"(fixed {summary['fixed_cost']:.4g}), argmax mIoU {summary['argmax_class_miou']:.3f}, world size "
          f"{summary['world_size']} -> {out}")
    print(f"[search] argmax architecture: {' '.join(summary['architecture'])}")
    return summary


def _log_summary(summary: dict, out: Path) -> None:
    tracking.log_metrics({"world_size": summary["world_size"],
                          **{f"final_{k}": v for k, v in _numbers(summary).items()}})
    for name in (THETA, HISTORY, PRUNING, CURVES, PLOT, METRICS):
        tracking.log_artifact(out / name, "search")
