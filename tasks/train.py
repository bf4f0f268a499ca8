"""Tasks of the retraining stages: train one stage (in this process, or in `nproc` DDP processes
through torchrun), or pass the previous stage's model on when the stage is switched off.

Run as `python -m tasks.train ...` it is the torchrun worker: the same training, no Prefect, no MLflow."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from nas_core.engine.distributed import check_shared_storage, init_distributed
from nas_core.io import atomic_write_json, atomic_write_text, remove_checkpoint
from nas_core.space.spaces import Architecture
from nas_core.train.stages import (
    StageSettings,
    load_payload,
    run_stage,
    save_payload,
    skip_payload,
    stage_payload,
    trained_lineage,
)
from tasks.dvc_files import METRICS
from tasks.torchrun import Nodes, report_main, reporting_errors, run_torchrun_node, worker_dies_with_launcher

MODEL, LINEAGE, CHECKPOINTS = "model.pt", "lineage.json", "checkpoints"
CURVES = "curves.csv"  # per-epoch loss, lr and validation scores: the stage's DVC plot
CURVE_COLUMNS = ["epoch", "loss", "lr", "val_class_miou", "val_category_miou", "val_top1", "images_per_s"]


def write_curves(path: Path, history: list[dict]) -> None:
    """The per-epoch history as CSV (a header only for a skipped stage), written atomically."""
    lines = [",".join(CURVE_COLUMNS)]
    lines += [",".join("" if row.get(c) is None else str(row[c]) for c in CURVE_COLUMNS) for row in history]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _scalars(d: dict) -> dict:
    return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def train_stage(stage: str, settings: StageSettings, arch_path: str, data_root: str, previous_path: str | None,
                out_dir: str, device: str = "auto", on_epoch_end: Callable[[int, dict], None] | None = None,
                threads: int | None = None, data_format: str = "cityscapes") -> dict:
    """Train `stage` and write model.pt, lineage.json and metrics.json into `out_dir` (rank 0)."""
    if threads:
        torch.set_num_threads(threads)
    info = init_distributed(device)
    # across machines every process reads these and resumes from rank 0's checkpoints: shared storage
    inputs = {"dataset": data_root, "chosen architecture": arch_path, **({"previous model": previous_path}
                                                                        if previous_path else {})}
    check_shared_storage(info, inputs, {"paths.train": out_dir})
    arch = Architecture.load(arch_path)
    previous = load_payload(previous_path) if previous_path else None
    out = Path(out_dir)
    model, result = run_stage(stage, arch, settings, data_root, previous, out / CHECKPOINTS, dist_info=info,
                              on_epoch_end=on_epoch_end, data_format=data_format)
    if not info.is_main:
        return {}
    lineage = trained_lineage(stage, previous, result["init"], result["class_names"])
    final = _scalars({k: v for k, v in result["final"].items() if k in ("class_miou", "category_miou", "top1", "top5")})
    save_payload(out / MODEL, stage_payload(stage, arch, model, result["task"], result["num_classes"], lineage, final,
                                            result["class_names"]))
    atomic_write_json(out / LINEAGE, lineage)
    summary = {"stage": stage, "status": "trained", "init": result["init"], "starts_from": lineage[-1]["starts_from"],
               "epochs": settings.epochs, "world_size": info.world_size, "train_images": result["train_images"],
               "val_images": result["val_images"], "final": final,
               "train_loss": result["history"][-1]["loss"] if result["history"] else None,
               "resumed_from": result["resumed_from"], "history": result["history"]}
    atomic_write_json(out / METRICS, summary)
    write_curves(out / CURVES, result["history"])
    # the checkpoint only serves an unfinished run: a later run (new code, same params) must start afresh;
    # other configurations' checkpoints stay resumable
    remove_checkpoint(result["checkpoint"])
    return summary


@task(name="train-stage", cache_policy=NO_CACHE)
def train_stage_task(stage: str, settings: StageSettings, arch_path: str, data_root: str, previous_path: str | None,
                     out_dir: str, device: str = "auto", nproc: int = 1,
                     on_epoch_end: Callable[[int, dict], None] | None = None, threads: int | None = None,
                     data_format: str = "cityscapes", nodes: Nodes = Nodes()) -> dict | None:
    """Train one stage; with nproc > 1 or several `nodes` in torchrun's DDP processes (per-epoch metrics
    come afterwards). Across machines: None where rank 0 ran on another node (that node has the summary)."""
    if nproc == 1 and nodes.nnodes == 1:
        return train_stage(stage, settings, arch_path, data_root, previous_path, out_dir, device, on_epoch_end,
                           threads, data_format)
    args = ["--stage", stage, "--settings", json.dumps(asdict(settings)), "--arch", arch_path, "--data", data_root,
            "--format", data_format, "--out", out_dir, "--device", device]
    if previous_path:
        args += ["--previous", previous_path]
    if threads:
        args += ["--threads", str(threads)]
    outcome = run_torchrun_node("tasks.train", args, nproc, stage, nodes)
    if outcome.code != 0:  # a worker's own error was raised by run_torchrun_node, naming the path
        raise RuntimeError(f"[{stage}] torchrun exited with status {outcome.code}; the checkpoint in "
                           f"{Path(out_dir) / CHECKPOINTS} resumes the run")
    if not outcome.main:
        return None
    summary = json.loads((Path(out_dir) / METRICS).read_text())
    if on_epoch_end is not None:
        for epoch, metrics in enumerate(summary["history"]):
            on_epoch_end(epoch, metrics)
    return summary


@task(name="skip-stage", cache_policy=NO_CACHE)
def skip_stage_task(stage: str, arch_path: str, previous_path: str | None, out_dir: str) -> dict:
    """Switched off: write the previous model (or 'scratch') through, with the skip in its lineage."""
    arch = Architecture.load(arch_path)
    previous = load_payload(previous_path) if previous_path else None
    payload = skip_payload(stage, arch, previous)
    out = Path(out_dir)
    save_payload(out / MODEL, payload)
    atomic_write_json(out / LINEAGE, payload["lineage"])
    summary = {"stage": stage, "status": "skipped", "passes_on": payload["lineage"][-1]["passes_on"]}
    atomic_write_json(out / METRICS, summary)
    write_curves(out / CURVES, [])
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="torchrun worker of one retraining stage")
    for name in ("--stage", "--settings", "--arch", "--data", "--out"):
        p.add_argument(name, required=True)
    p.add_argument("--previous")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int)
    p.add_argument("--format", default="cityscapes")
    a = p.parse_args(argv)
    worker_dies_with_launcher()  # a torchrun killed outright takes its workers with it
    with reporting_errors():
        summary = train_stage(a.stage, StageSettings.from_dict(json.loads(a.settings)), a.arch, a.data, a.previous,
                              a.out, a.device, threads=a.threads,
                              data_format=a.format)
    if summary:
        report_main()  # rank 0 wrote the outputs: its node's command logs them
    return 0


if __name__ == "__main__":
    sys.exit(main())
