"""Tasks of the benchmark stage: one network's Table-1 row, the references the trained network must
clear, and the report (markdown + DVC metrics JSON), all written atomically."""
from __future__ import annotations

from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from torch.utils.data import DataLoader

from nas_core.data.target import target_classes, target_dataset
from nas_core.engine.evaluate import evaluate_constant, evaluate_segmentation, majority_class
from nas_core.io import atomic_write_json, atomic_write_text
from nas_core.report.benchmark import (
    BenchmarkRow,
    Measure,
    baseline_network,
    benchmark_network,
    latency_prediction,
    local_target,
    report_markdown,
    target_measure,
    usable_weights,
)
from nas_core.space.network import SegmentationNetwork
from nas_core.space.spaces import Architecture
from nas_core.train.stages import load_payload, payload_classes, segmentation_network
from tasks.dvc_files import METRICS

REPORT, ONNX_DIR = "report.md", "onnx"
OURS = "ours"


def make_measure(target: str, threads: int, warmup: int, runs: int, latency_cfg=None,
                 optimization: str = "all") -> Measure:
    """'local': onnxruntime on this machine (the profiling runner, threads/warmup/runs from benchmark);
    'profiling': the target and protocol of the latency profiling stage (params.yaml's `latency`)."""
    if target == "local":
        return target_measure(local_target(threads, warmup, runs, optimization=optimization))
    if target == "profiling":
        from nas_core.cost.factory import build_target

        return target_measure(build_target(latency_cfg))
    raise ValueError(f"benchmark.target: unknown target {target!r}; valid targets are: local, profiling")


def val_loader(dataset_root: str, data_format: str = "cityscapes") -> DataLoader:
    """The target dataset's val split at its full resolution, one image per batch."""
    return DataLoader(target_dataset(data_format, dataset_root, "val"), batch_size=1)


def trained_network(model_path: str, class_names: tuple[str, ...], dataset_root: str):
    """The retrained network of `model_path`, refused when its head predicts other classes than the dataset's
    (a chain whose target stages were all switched off passes COCO's model on)."""
    payload = load_payload(model_path)
    have = payload_classes(payload)
    if have is not None and have != tuple(class_names):
        raise ValueError(f"{model_path}: its head predicts {len(have)} classes ({', '.join(have[:4])}, ...), the "
                         f"dataset {dataset_root} has {len(class_names)} ({', '.join(class_names[:4])}, ...): train "
                         "on the target (train.train_fine.enabled: true)")
    return segmentation_network(payload, model_path)


@task(name="benchmark-network", cache_policy=NO_CACHE)
def benchmark_network_task(name: str, model_path: str | None, weights: str | None, onnx_dir: str,
                           input_size: tuple[int, int], target: str, threads: int, warmup: int, runs: int,
                           dataset_root: str, atol: float, latency_cfg=None, data_format: str = "cityscapes",
                           optimization: str = "all") -> dict:
    """One row: our trained network (from model_path) or the baseline `name` (with `weights` if given and
    made for the dataset's classes), scored on the target dataset's classes."""
    torch.set_num_threads(threads)  # the evaluation too: the shared CPU punishes extra threads
    classes = target_classes(data_format, dataset_root).names
    if model_path is not None:
        model = trained_network(model_path, classes, dataset_root)
        arch, label = model.arch, "trained here"
    else:
        weights = usable_weights(name, weights, classes)
        model, arch, label = baseline_network(name, weights, len(classes))
    loader = val_loader(dataset_root, data_format) if label != "random" else None
    row = benchmark_network(name, model, arch, label, Path(onnx_dir) / f"{name}.onnx", input_size,
                            make_measure(target, threads, warmup, runs, latency_cfg, optimization), loader,
                            len(classes), atol,
                            class_names=classes)
    return row.to_dict()


@task(name="benchmark-references", cache_policy=NO_CACHE)
def references_task(model_path: str, dataset_root: str, seed: int = 0, data_format: str = "cityscapes"
                    ) -> dict[str, float]:
    """Class mIoU of the same architecture untrained (fresh seeded init) and of the best constant prediction."""
    arch = Architecture.from_dict(load_payload(model_path)["arch"])
    classes = target_classes(data_format, dataset_root).names
    torch.manual_seed(seed)
    untrained = evaluate_segmentation(SegmentationNetwork(arch, len(classes)).eval(),
                                      val_loader(dataset_root, data_format), len(classes), class_names=classes)
    # the constant's class comes from the training labels (whole images: no crop or flip)
    train_labels = DataLoader(target_dataset(data_format, dataset_root, "train"), batch_size=1)
    cls = majority_class(train_labels, len(classes))
    constant = evaluate_constant(val_loader(dataset_root, data_format), cls, len(classes), classes)
    return {"untrained (same architecture, fresh init)": float(untrained["class_miou"]),
            f"constant prediction (majority class '{classes[cls]}')": float(constant["class_miou"])}


LATENCY_CHECK = "latency_check"  # the chosen network's measurement at the latency table's input (not an output)


@task(name="latency-prediction", cache_policy=NO_CACHE)
def prediction_task(model_path: str, choice: dict, latency_cfg, out_dir: str, num_classes: int) -> dict | None:
    """The chosen network timed whole at the latency table's input on the latency stage's target and
    protocol, beside what the select stage predicted for it: the table alone and the latency model
    (issue 16). None when the choice carries no latency prediction (no latency table for its space)."""
    from nas_core.cost.factory import build_target

    arch = Architecture.from_dict(load_payload(model_path)["arch"])
    return latency_prediction(arch, choice, build_target(latency_cfg), latency_cfg.input_size.hw, num_classes,
                              Path(out_dir) / LATENCY_CHECK)


@task(name="benchmark-report", cache_policy=NO_CACHE)
def write_report_task(rows: list[dict], references: dict[str, float], out_dir: str, target: str,
                      input_size: tuple[int, int], choice: dict | None = None, prediction: dict | None = None) -> dict:
    """report.md (Table-1 style) and metrics.json (DVC metrics: one entry per network)."""
    fields = set(BenchmarkRow.__dataclass_fields__)
    table = [BenchmarkRow(**{k: v for k, v in r.items() if k in fields}) for r in rows]
    out = Path(out_dir)
    atomic_write_text(out / REPORT, report_markdown(table, target, input_size, references, prediction))
    metrics = {"target": target, "input_size": list(input_size), "networks": {r["network"]: r for r in rows},
               "references": references, **({"choice": choice} if choice else {}),
               **({"prediction": prediction} if prediction else {})}
    atomic_write_json(out / METRICS, metrics)
    return {"report": str(out / REPORT), "metrics": str(out / METRICS)}
