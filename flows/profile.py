"""Flow for the DVC stage `latency_table` (paper section 5.2): device facts, a latency table per
space measured on the target (one device, or a pool of identical devices sharing the units), and
the fidelity check of the table, logged to MLflow with the device's facts as tags."""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.runners import make_task_runner
from nas_core.config import load_params
from nas_core.cost.factory import device_name
from nas_core.cost.fidelity import placeholder_plot
from nas_core.cost.pool import check_same_hardware, pool_facts, pool_stats
from nas_core.cost.targets import ProfileError
from nas_core.data.target import target_classes
from nas_core.io import atomic_write_json
from tasks import tracking
from tasks.flowruns import subflow_tags, untagged_task_runs
from tasks.profile import (
    DEVICE,
    FIDELITY_JSON,
    FIDELITY_PLOT,
    deal_task,
    device_facts_task,
    device_slot,  # noqa: F401 (the per-device limit; callers import it from here)
    fidelity_task,
    latency_tables_task,
    measure_device_task,
)

FACT_TAGS = ("hostname", "os", "cpu", "gpu", "jetson_model", "onnxruntime", "tensorrt", "power_mode", "target")


@flow(name="latency-table")
@untagged_task_runs
def profile_flow(params_file: str = "params.yaml", overrides: tuple[str, ...] = ()) -> dict:
    params = load_params(params_file, overrides)
    cfg = params.latency
    # one job per device at a time: more workers than devices would only wait on the slots
    runner = make_task_runner(cfg, workers=len(cfg.devices()), section="latency")
    # the decoder's last layer has the target dataset's classes
    num_classes = len(target_classes(params.data.format, params.paths.dataset))
    with subflow_tags():
        measured = devices_flow.with_options(task_runner=runner)(cfg, params.paths.latency, num_classes)
    return _report(params, measured, num_classes)


def _gather(futures: list) -> list[dict]:
    """Every job's result; the others finish (and keep their measurements) when one fails."""
    results, failures = [], []
    for future in futures:
        try:
            results.append(future.result())
        except Exception as e:
            failures.append(e)
    if len(failures) == 1:
        raise failures[0]
    if failures:
        raise ProfileError(f"{len(failures)} of {len(futures)} device jobs failed (measurements so far are kept; "
                           f"a rerun measures only the rest):\n  " + "\n  ".join(map(str, failures)))
    return results


@flow(name="profile-devices")
@untagged_task_runs
def devices_flow(cfg, out_dir: str, num_classes: int) -> dict:
    """Every device's facts (a pool must be one kind of device), then each device's share of the
    units no device has measured yet; each job holds its device's slot."""
    devices = cfg.devices()
    pooled = len(devices) > 1  # a pool's log lines name the device

    def opts(d):  # the tag also lets operators set a task-level limit per device (`prefect concurrency-limit`)
        return dict(retries=cfg.retries, retry_delay_seconds=cfg.backoff_s, tags=[f"device:{device_name(d)}"])

    facts_jobs = _gather([device_facts_task.with_options(**opts(d)).submit(d, out_dir) for d in devices])
    facts = {j["device"]: j["facts"] for j in facts_jobs}
    check_same_hardware(facts)
    atomic_write_json(Path(out_dir) / DEVICE, pool_facts(facts))
    plan = deal_task(cfg, out_dir, num_classes)
    jobs = _gather([measure_device_task.with_options(**opts(d)).submit(
        d, out_dir, share, num_classes, device_name(d) if pooled else "") for d, share in zip(devices, plan["shares"])])
    stats = {name: pool_stats([j["stats"][name] for j in jobs if name in j["stats"]], units)
             for name, units in plan["units"].items()}
    spans = [{"phase": "facts", **{k: j[k] for k in ("device", "start", "end")}} for j in facts_jobs]
    spans += [{"phase": "measure", "measured": sum(s["measured"] for s in j["stats"].values()),
               **{k: j[k] for k in ("device", "start", "end")}} for j in jobs]
    return {"facts": pool_facts(facts), "stats": stats, "jobs": spans}


def _report(params, measured: dict, num_classes: int) -> dict:
    """Tables and fidelity from the stored measurements; metrics, MLflow run, summary lines."""
    cfg, out_dir, facts = params.latency, params.paths.latency, measured["facts"]
    tables = latency_tables_task(cfg, out_dir, num_classes)
    for s, t in tables.items():
        t.update({f"profile_{k}": v for k, v in measured["stats"][s].items()})
    if cfg.fidelity.num_networks:
        fidelity = fidelity_task(cfg, out_dir, num_classes)
    else:
        fidelity = {"skipped": "latency.fidelity.num_networks is 0"}
        atomic_write_json(Path(out_dir) / FIDELITY_JSON, fidelity)
        placeholder_plot(Path(out_dir) / FIDELITY_PLOT, "fidelity check skipped (latency.fidelity.num_networks: 0)")

    metrics = {f"{s}.{k}": v for s, t in tables.items() for k, v in t.items() if isinstance(v, (int, float))}
    metrics.update({f"fidelity.{k}": v for k, v in fidelity.items() if isinstance(v, (int, float))})
    metrics.update({f"fidelity.{who}.{k}": v for who in ("table", "model") for k, v in fidelity.get(who, {}).items()
                    if isinstance(v, (int, float))})
    atomic_write_json(Path(params.paths.metrics) / "latency_table.json", metrics)
    tags = {f"device.{k}": str(facts[k])[:500] for k in FACT_TAGS if facts.get(k) is not None}
    with tracking.stage_run(params.tracking, "latency_table", params={**cfg.model_dump(mode="json"),
                                                                      "num_classes": num_classes}, tags=tags):
        tracking.log_metrics(metrics)
        for t in tables.values():
            tracking.log_artifact(t["path"], "latency")
            tracking.log_artifact(t["model"], "latency")
        for name in (DEVICE, FIDELITY_JSON, FIDELITY_PLOT):
            if (Path(out_dir) / name).is_file():
                tracking.log_artifact(Path(out_dir) / name, "latency")
    if len(cfg.devices()) > 1:
        for j in measured["jobs"]:
            if j["phase"] == "measure":
                print(f"[latency_table] {j['device']}: {j['measured']} unit(s) in {j['end'] - j['start']:.1f} s")
    for s, t in tables.items():
        fitted = (f"; model fitted on {t['model_networks']} networks (fit MAPE {100 * t['model_fit_mape']:.1f}%)"
                  if "model_networks" in t else "")
        print(f"[latency_table] {s}: {t['rows']} rows, networks {t['min_ms']:.2f}-{t['max_ms']:.2f} ms on "
              f"{facts.get('target')} -> {t['path']}{fitted}")
    if "held_out" in fidelity:
        for who in ("table", "model"):
            m = fidelity[who]
            print(f"[latency_table] fidelity, {who}, over {fidelity['held_out']} held-out networks: Kendall tau "
                  f"{m['kendall_tau']:.3f}, {100 * m['within_10pct']:.0f}% within +-10%, MAPE {100 * m['mape']:.1f}%")
    return {"facts": facts, "tables": tables, "fidelity": fidelity, "jobs": measured["jobs"]}
