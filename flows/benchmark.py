"""Flow for the DVC stage `benchmark` (paper Table 1): our retrained network and the baselines, each
exported to ONNX, timed on the target at batch 1 and scored on the target dataset's val split (per class too);
a markdown report, DVC metrics, and the final model logged to MLflow (PyTorch and ONNX) and registered."""
from __future__ import annotations

import json
from pathlib import Path

from prefect import flow

from flows.train import stage_dir
from nas_core.config import load_params
from nas_core.cost.factory import device_name
from nas_core.data.target import target_classes
from nas_core.train.stages import TRAIN_STAGES, load_payload, segmentation_network
from tasks import tracking
from tasks.benchmark import (
    ONNX_DIR,
    OURS,
    benchmark_network_task,
    prediction_task,
    references_task,
    write_report_task,
)
from tasks.dvc_files import SELECT_METRICS
from tasks.flowruns import untagged_task_runs
from tasks.train import MODEL


@flow(name="benchmark")
@untagged_task_runs
def benchmark_flow(params_file: str = "params.yaml", overrides: tuple[str, ...] = (),
                experiment: str | None = None) -> dict:
    params = load_params(params_file, overrides, experiment)
    cfg, paths = params.benchmark, params.paths
    out_dir, model_path = Path(paths.benchmark), stage_dir(paths, TRAIN_STAGES[-1]) / MODEL
    onnx_dir = out_dir / ONNX_DIR
    common = dict(onnx_dir=str(onnx_dir), input_size=cfg.input_size.hw, target=cfg.target, threads=cfg.threads,
                  warmup=cfg.warmup, runs=cfg.runs, dataset_root=paths.dataset, atol=cfg.onnx_atol,
                  latency_cfg=params.latency, data_format=params.data.format, optimization=cfg.optimization)
    # one network at a time: concurrent latency runs would share the cores and disturb each other
    # an experiment's benchmark measures its own network; the report stage measures the baselines for all
    ours = params.experiment or OURS
    baselines = () if params.experiment else cfg.baselines
    rows = [benchmark_network_task(ours, str(model_path), None, **common)]
    rows += [benchmark_network_task(name, None, cfg.weights.get(name), **common) for name in baselines]
    references = references_task(str(model_path), paths.dataset, params.train.seed, params.data.format)
    lat = params.latency
    where = (f"local:{device_name(lat)} (onnxruntime CPU, optimization {cfg.optimization}, {cfg.threads} thread(s), "
             f"{cfg.runs} runs)"
             if cfg.target == "local" else f"{lat.target}:{device_name(lat)} ({lat.backend}, {lat.runs}+ runs)")
    # an experiment's row carries how its network was chosen (rule, reference, budget, whether it was met)
    choice_path = Path(paths.samples) / SELECT_METRICS
    choice = json.loads(choice_path.read_text()) if params.experiment and choice_path.is_file() else None
    prediction = prediction_task(str(model_path), choice, params.latency, str(out_dir),
                                 len(target_classes(params.data.format, paths.dataset))) if choice else None
    written = write_report_task(rows, references, str(out_dir), where, cfg.input_size.hw, choice, prediction)

    with tracking.stage_run(params.tracking, params.dvc_stage("benchmark"), params=cfg.model_dump(mode="json")):
        model = segmentation_network(load_payload(model_path), str(model_path))
        registered = params.tracking.registered_model if cfg.register_model else None
        # the model first: MLflow gives a new model the run's metrics so far, and the baselines' are not its own
        logged = tracking.log_model(model, onnx_dir / f"{ours}.onnx", "squeezenas", registered)
        for r in rows:
            metrics = {f"{r['network']}.{k}": r[k] for k in
                       ("latency_ms", "gmacs", "gmacs_per_s", "params_m", "onnx_max_rel_diff", "class_miou")
                       if r.get(k) is not None}
            metrics.update(tracking.class_iou_metrics(r))
            tracking.log_metrics(metrics, model_id=logged["pytorch_model_id"] if r["network"] == ours else None)
        if prediction:
            tracking.log_metrics({f"prediction.{k}": v for k, v in prediction.items() if isinstance(v, float)})
        tracking.log_artifact(written["report"], "benchmark")
        tracking.log_artifact(written["metrics"], "benchmark")
    print(Path(written["report"]).read_text())
    print(f"[benchmark] model logged: {logged}")
    return {"rows": rows, "references": references, "model": logged, **written}
