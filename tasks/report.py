"""Tasks of the report stage (paper Table 1, Figures 5-6): the rows of the experiments' networks, the
published networks and MobileNetV3, every network timed in one interleaved session on the target."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from nas_core.cost.export import Unit
from nas_core.data.target import target_classes
from nas_core.report.benchmark import baseline_network, describe_architecture, network_facts, usable_weights
from nas_core.space.spaces import Architecture
from tasks.benchmark import ONNX_DIR, val_loader
from tasks.dvc_files import METRICS

# Table 1's reference rows besides the experiments: the six published networks, then MobileNetV3
REFERENCE_NETWORKS = ("squeezenas_mac_small", "squeezenas_lat_small", "squeezenas_mac_large", "squeezenas_lat_large",
                      "squeezenas_mac_xlarge", "squeezenas_lat_xlarge", "mobilenetv3_small", "mobilenetv3_large")


def _objective(name: str) -> str | None:
    return {"mac": "macs", "lat": "latency"}.get(name.split("_")[1]) if name.startswith("squeezenas_") else None


@task(name="experiment-row", cache_policy=NO_CACHE)
def experiment_row_task(name: str, space: str, objective: str, benchmark_dir: str, card: str) -> dict:
    """Our network of experiment `name` as its benchmark stage measured it (mIoU, MACs, params) and
    the ONNX file that stage exported and checked (timed again here, with all the others)."""
    metrics_path = Path(benchmark_dir) / METRICS
    try:
        metrics = json.loads(metrics_path.read_text())
        row = metrics["networks"][name]
    except FileNotFoundError:
        raise FileNotFoundError(f"{metrics_path}: experiment {name!r} has no benchmark (run dvc repro "
                                f"benchmark@{name})") from None
    except (KeyError, ValueError) as e:
        raise ValueError(f"{metrics_path}: no row for network {name!r} ({e})") from None
    onnx = Path(benchmark_dir) / ONNX_DIR / f"{name}.onnx"
    if not onnx.is_file():
        raise FileNotFoundError(f"{onnx}: the benchmark stage of {name!r} exported no ONNX model")
    arch = Architecture.load(card)
    return {"network": name, "kind": "ours", "space": space, "objective": objective,
            "architecture": list(arch.choices), "weights": "trained here", "class_miou": row["class_miou"],
            "gmacs": row["macs"] / 1e9, "params_m": row["params"] / 1e6, "onnx": str(onnx),
            "choice": metrics.get("choice"), "class_iou": row.get("class_iou")}


@task(name="reference-row", cache_policy=NO_CACHE)
def reference_row_task(name: str, weights: str | None, onnx_dir: str, input_size: tuple[int, int],
                       dataset_root: str, atol: float, threads: int, data_format: str = "cityscapes") -> dict:
    """A published network (with the authors' weights when given and the dataset has their Cityscapes classes:
    then its mIoU on val) or MobileNetV3, with the dataset's classes: exported to ONNX and checked, MACs and
    parameters as for ours."""
    torch.set_num_threads(threads)
    classes = target_classes(data_format, dataset_root).names
    weights = usable_weights(name, weights, classes)
    model, arch, label = baseline_network(name, weights, len(classes))
    onnx = Path(onnx_dir) / f"{name}.onnx"
    loader = val_loader(dataset_root, data_format) if weights else None
    # the authors' weights get their mIoU; random ones none
    facts = network_facts(name, model, arch, onnx, input_size, loader, len(classes), atol, class_names=classes)
    kind = "published" if name.startswith("squeezenas_") else "baseline"
    return {"network": name, "kind": kind, "space": arch.space if arch else None, "objective": _objective(name),
            "architecture": list(arch.choices) if arch else None,
            "weights": label if label != "random" else "none (random init: no mIoU)",
            "class_miou": facts["class_miou"], "gmacs": facts["macs"] / 1e9, "params_m": facts["params"] / 1e6,
            "onnx": str(onnx), "family": describe_architecture(arch) if arch else f"{name} (LR-ASPP head)",
            "class_iou": facts["class_iou"]}


@task(name="time-networks", cache_policy=NO_CACHE)
def time_networks_task(onnx_paths: dict[str, str], input_size: tuple[int, int], target) -> dict[str, dict]:
    """Every network's latency at batch 1 in one session of `target`: with rounds > 1 the runner
    interleaves them, so that a busy moment of a shared machine hits all of them alike."""
    from nas_core.cost.targets import Job

    if not target.needs_onnx:
        raise ValueError(f"{target.name}: this target times PyTorch modules; Table 1 times the ONNX models of "
                         "every network (latency.backend onnxruntime or trtexec)")
    shape = ((1, 3, *input_size),)
    keys = {f"report:{name}:{input_size[0]}x{input_size[1]}": name for name in onnx_paths}
    jobs = [Job(Unit(key, shape, lambda: None), Path(onnx_paths[name])) for key, name in keys.items()]
    results: dict[str, dict] = {}
    print(f"[report] timing {len(jobs)} networks at batch 1 on {target.name} (interleaved)")
    with target:
        target.measure(jobs, lambda r: results.__setitem__(keys[r["key"]], r))
    missing = sorted(set(onnx_paths) - set(results))
    if missing:
        raise RuntimeError(f"{target.name}: no latency for {', '.join(missing)}")
    return results
