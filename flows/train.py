"""Flows of the DVC stages pretrain_imagenet, pretrain_coco, train_coarse and train_fine (paper section
5.3.2): one implementation parameterised by the stage. Each stage starts from the previous stage's
model.pt; a switched-off stage passes that model on, so the DAG stays the same."""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from nas_core.config import Paths, load_params
from nas_core.train.stages import STAGE_DATA, TRAIN_STAGES, stage_settings
from tasks import tracking
from tasks.dvc_files import CHOSEN_ARCHITECTURE, METRICS
from tasks.flowruns import untagged_task_runs
from tasks.torchrun import Nodes
from tasks.train import LINEAGE, MODEL, skip_stage_task, train_stage_task

# the chain of section 5.3.2; each stage consumes the model of the one before it
PREVIOUS = dict(zip(TRAIN_STAGES, (None, *TRAIN_STAGES[:-1])))


def stage_dir(paths: Paths, stage: str) -> Path:
    return Path(paths.train) / stage


def architecture_path(paths: Paths) -> Path:
    """The architecture chosen by the sample/select stage (its weights are not used: footnote 2)."""
    return Path(paths.samples) / CHOSEN_ARCHITECTURE


def dataset_root(paths: Paths, stage: str) -> str:
    return {"imagenet": paths.imagenet, "coco": paths.coco, "target": paths.dataset}[STAGE_DATA[stage].dataset]


def run_train_stage(stage: str, params_file: str = "params.yaml", overrides: tuple[str, ...] = (),
                    experiment: str | None = None) -> dict:
    """Train (or skip) `stage` as params.yaml says; outputs under ${paths.train}/<stage>/, an MLflow run."""
    if stage not in PREVIOUS:
        raise ValueError(f"unknown stage {stage!r}; valid stages are: {', '.join(TRAIN_STAGES)}")
    params = load_params(params_file, overrides, experiment)
    paths, cfg = params.paths, params.train
    stage_cfg = cfg.stage(stage)
    arch = architecture_path(paths)
    if not arch.is_file():
        raise FileNotFoundError(f"{arch}: no chosen architecture (written by the sample stage, or by hand)")
    previous = str(stage_dir(paths, PREVIOUS[stage]) / MODEL) if PREVIOUS[stage] else None
    out_dir = str(stage_dir(paths, stage))
    logged = {"stage": stage_cfg.model_dump(mode="json"),
              "shared": cfg.model_dump(mode="json", exclude=set(PREVIOUS))}
    run = lambda: tracking.stage_run(  # noqa: E731
        params.tracking, params.dvc_stage(stage), params=logged,
        tags={"squeezenas.enabled": str(stage_cfg.enabled).lower()})

    def log_epoch(epoch: int, metrics: dict) -> None:
        tracking.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch + 1)

    def train(on_epoch_end) -> dict | None:
        return train_stage_task(stage, stage_settings(cfg, stage), str(arch), dataset_root(paths, stage), previous,
                                out_dir, cfg.device, cfg.nproc, on_epoch_end, cfg.threads, params.data.format,
                                Nodes.of(cfg, f"{params.dvc_stage(stage)}-{out_dir}"))

    if stage_cfg.enabled and cfg.nnodes > 1:
        # across machines: the rendezvous decides which node holds rank 0; that node's command alone opens
        # the MLflow run, after the training, and replays the per-epoch metrics
        summary = train(None)
        if summary is None:
            print(f"[{stage}] this node's workers are done; rank 0 ran on another node of {cfg.nnodes}: its "
                  f"command wrote {out_dir} and logs the MLflow run")
            return {"main_node": False, "nnodes": cfg.nnodes}
        with run():
            for epoch, metrics in enumerate(summary["history"]):
                log_epoch(epoch, metrics)
            _log_trained(stage, summary, out_dir)
        return summary
    with run():
        if not stage_cfg.enabled:
            summary = skip_stage_task(stage, str(arch), previous, out_dir)
            print(f"[{stage}] switched off: passes on {summary['passes_on']}")
            _log_artifacts(stage, out_dir)
        else:
            summary = train(log_epoch)
            _log_trained(stage, summary, out_dir)
    return summary


def _log_trained(stage: str, summary: dict, out_dir: str) -> None:
    """A trained stage's final metrics, its line, its artifacts (into the open MLflow run)."""
    tracking.log_metrics({"world_size": summary["world_size"],
                          **{f"final_{k}": v for k, v in summary["final"].items()}})
    print(f"[{stage}] trained from {summary['starts_from']} ({summary['init']}) on {summary['world_size']} processes: "
          f"{summary['final']}")
    if summary["init"] == "new_head":
        print(f"[{stage}] the segmentation head was re-initialised for the dataset's classes (lineage.json)")
    _log_artifacts(stage, out_dir)


def _log_artifacts(stage: str, out_dir: str) -> None:
    for name in (LINEAGE, METRICS):
        tracking.log_artifact(Path(out_dir) / name, stage)


def _stage_flow(stage: str):
    @flow(name=stage.replace("_", "-"))
    @untagged_task_runs
    def stage_flow(params_file: str = "params.yaml", overrides: tuple[str, ...] = (),
                   experiment: str | None = None) -> dict:
        return run_train_stage(stage, params_file, overrides, experiment)
    return stage_flow


FLOWS = {stage: _stage_flow(stage) for stage in TRAIN_STAGES}
# the deployments' entrypoints in prefect.yaml
pretrain_imagenet_flow, pretrain_coco_flow, train_coarse_flow, train_fine_flow = FLOWS.values()
