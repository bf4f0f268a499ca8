"""Tasks of the latency_table stage: device facts, one latency table per space, the fidelity
check. Each opens its own connection to the device; a transient failure (dropped SSH connection,
timeout) is retried by Prefect after the profile loop's own reconnects are spent, and resumes."""
from __future__ import annotations

from pathlib import Path

from prefect import task

from nas_core.cost_table import cost_matrix, read_cost_table, write_cost_table
from nas_core.io import atomic_write_json
from nas_core.profiling.fidelity import (fidelity_metrics, predicted_latencies, sample_architectures,
                                         scatter_plot)
from nas_core.profiling.profile import MeasurementStore, measure_networks, profile_space, store_path
from nas_core.profiling.targets import TransientError, build_target


def latency_table_path(out_dir: str | Path, space: str) -> Path:
    return Path(out_dir) / f"latency_{space}.parquet"


def _store(out_dir: str | Path, target) -> MeasurementStore:
    return MeasurementStore(store_path(Path(out_dir) / "measurements", target))


def only_transient(task, task_run, state) -> bool:
    """Prefect retry condition: retry dropped connections and timeouts, not refused host keys,
    failed authentication or models the device cannot run."""
    try:
        state.result()
    except TransientError:
        return True
    except BaseException:
        return False
    return False


@task(name="device-facts", retry_condition_fn=only_transient)
def device_facts_task(cfg, out_dir: str) -> dict:
    """Apply the power mode if asked, record the device's facts next to the tables."""
    target = build_target(cfg)
    with target:
        facts = {**target.facts(), "target": target.name, "protocol": target.protocol.manifest()}
    atomic_write_json(Path(out_dir) / "device.json", facts)
    return facts


@task(name="latency-table", retry_condition_fn=only_transient)
def latency_table_task(space: str, cfg, out_dir: str) -> dict:
    """Profile `space` (resuming from stored measurements), write its table atomically."""
    target = build_target(cfg)
    table, stats = profile_space(space, cfg.input_size.hw, cfg.num_classes, target, _store(out_dir, target),
                                 Path(out_dir) / "onnx", edge_correction=cfg.edge_correction, retries=cfg.retries,
                                 backoff_s=cfg.backoff_s)
    path = latency_table_path(out_dir, space)
    write_cost_table(table, path)
    matrix, fixed = cost_matrix(table, "latency_ms")
    return {"path": str(path), "rows": len(table), "fixed_ms": fixed, "min_ms": fixed + matrix.min(axis=1).sum(),
            "max_ms": fixed + matrix.max(axis=1).sum(), **{f"profile_{k}": v for k, v in stats.items()}}


@task(name="latency-fidelity", retry_condition_fn=only_transient)
def fidelity_task(cfg, out_dir: str) -> dict:
    """Measure sampled whole networks end to end; compare with the table; metrics and scatter plot."""
    f = cfg.fidelity
    table = read_cost_table(latency_table_path(out_dir, f.space))
    archs = sample_architectures(f.space, f.num_networks, f.seed)
    target = build_target(cfg)
    measured = measure_networks(archs, cfg.input_size.hw, cfg.num_classes, target, _store(out_dir, target),
                                Path(out_dir) / "onnx", retries=cfg.retries, backoff_s=cfg.backoff_s)
    predicted = predicted_latencies(table, archs)
    metrics = fidelity_metrics(predicted, measured)
    scatter_plot(predicted, measured, Path(out_dir) / "fidelity.png",
                 f"{f.space} {cfg.input_size.height}x{cfg.input_size.width} on {target.name}")
    atomic_write_json(Path(out_dir) / "fidelity.json", {
        **metrics, "space": f.space, "seed": f.seed, "target": target.name,
        "networks": [{"choices": list(a.choices), "predicted_ms": p, "measured_ms": m}
                     for a, p, m in zip(archs, predicted, measured)]})
    return metrics
