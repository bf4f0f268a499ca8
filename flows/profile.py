"""Flow for the DVC stage `latency_table` (paper section 5.2): device facts, a latency table per
space measured on the target, and the fidelity check of the table, logged to MLflow with the
device's facts as tags."""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_client
from prefect.concurrency.sync import concurrency

from nas_core.config import load_params
from nas_core.io import atomic_write_json
from nas_core.profiling.fidelity import placeholder_plot
from nas_core.profiling.targets import device_name
from tasks import tracking
from tasks.profile import device_facts_task, fidelity_task, latency_table_task

FACT_TAGS = ("hostname", "os", "cpu", "gpu", "jetson_model", "onnxruntime", "tensorrt", "power_mode", "target")


def device_slot(device: str) -> str:
    """A global concurrency limit of 1 for `device`, created on first use: one profile per device
    at a time, across every flow run that reaches this Prefect server."""
    name = f"device:{device}"
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except Exception:  # absent: create it (a concurrent creator may win; upsert tolerates that)
            client.upsert_global_concurrency_limit_by_name(name, limit=1)
    return name


@flow(name="latency-table")
def profile_flow(params_file: str = "params.yaml", overrides: tuple[str, ...] = ()) -> dict:
    params = load_params(params_file, overrides)
    with concurrency(device_slot(device_name(params.latency)), occupy=1):
        return _profile(params)


def _profile(params) -> dict:
    cfg, out_dir = params.latency, params.paths.latency
    # the tag also lets operators set a task-level limit per device (`prefect concurrency-limit create`)
    opts = dict(retries=cfg.retries, retry_delay_seconds=cfg.backoff_s, tags=[f"device:{device_name(cfg)}"])
    facts = device_facts_task.with_options(**opts)(cfg, out_dir)
    tables = {s: latency_table_task.with_options(**opts)(s, cfg, out_dir) for s in cfg.spaces}
    if cfg.fidelity.num_networks:
        fidelity = fidelity_task.with_options(**opts)(cfg, out_dir)
    else:
        fidelity = {"skipped": "latency.fidelity.num_networks is 0"}
        atomic_write_json(Path(out_dir) / "fidelity.json", fidelity)
        placeholder_plot(Path(out_dir) / "fidelity.png", "fidelity check skipped (latency.fidelity.num_networks: 0)")

    metrics = {f"{s}.{k}": v for s, t in tables.items() for k, v in t.items() if isinstance(v, (int, float))}
    metrics.update({f"fidelity.{k}": v for k, v in fidelity.items() if isinstance(v, (int, float))})
    atomic_write_json(Path(params.paths.metrics) / "latency_table.json", metrics)
    tags = {f"device.{k}": str(facts[k])[:500] for k in FACT_TAGS if facts.get(k) is not None}
    with tracking.stage_run(params.tracking, "latency_table", params=cfg.model_dump(mode="json"), tags=tags):
        tracking.log_metrics(metrics)
        for t in tables.values():
            tracking.log_artifact(t["path"], "latency")
        for name in ("device.json", "fidelity.json", "fidelity.png"):
            if (Path(out_dir) / name).is_file():
                tracking.log_artifact(Path(out_dir) / name, "latency")
    for s, t in tables.items():
        print(f"[latency_table] {s}: {t['rows']} rows, networks {t['min_ms']:.2f}-{t['max_ms']:.2f} ms on "
              f"{facts.get('target')} -> {t['path']}")
    if "kendall_tau" in fidelity:
        print(f"[latency_table] fidelity over {fidelity['n']} networks: Kendall tau {fidelity['kendall_tau']:.3f}, "
              f"{100 * fidelity['within_10pct']:.0f}% within +-10%, MAPE {100 * fidelity['mape']:.1f}%")
    return {"facts": facts, "tables": tables, "fidelity": fidelity}
