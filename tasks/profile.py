"""Tasks of the latency_table stage: each device's facts, each device's share of the units to time,
the tables assembled from every device's measurements, the fidelity check. A device job holds its
device's slot (one profiling job per device at a time, across flow runs) and opens its own
connection; a transient failure (dropped SSH connection, timeout) is retried by Prefect after the
profile loop's own reconnects are spent, and resumes from the stored measurements."""
from __future__ import annotations

import time
from pathlib import Path

from prefect import get_client, task
from prefect.concurrency.sync import concurrency

from nas_core.cost.factory import build_target, device_name
from nas_core.cost.fidelity import fidelity_metrics, predicted_latencies, scatter_plot
from nas_core.cost.latency import (
    MeasurementStore,
    latency_table,
    measure_units,
    store_path,
    stored_network_latencies,
)
from nas_core.cost.macs import build_cost_table, cost_matrix, read_cost_table, write_cost_table
from nas_core.cost.model import CostModel, fit_latency_model, model_path, read_model, table_model, write_model
from nas_core.cost.pool import FIDELITY, PoolStore, deal, fit_networks, held_out_networks, planned_units
from nas_core.cost.targets import TransientError
from nas_core.io import atomic_dir, atomic_write_json

TABLES = "tables"  # the stage's DVC output: one table per configured space, nothing else
DEVICE, FIDELITY_JSON, FIDELITY_PLOT = "device.json", "fidelity.json", "fidelity.png"
NETWORKS = "networks"  # the measuring call of every whole network (model fits and fidelity check)


def latency_table_path(out_dir: str | Path, space: str) -> Path:
    return Path(out_dir) / TABLES / f"latency_{space}.parquet"


def device_slot(device: str) -> str:
    """A global concurrency limit of 1 for `device`, created on first use: one profiling job per
    device at a time, across every flow run that reaches this Prefect server."""
    name = f"device:{device}"
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except Exception:  # absent: create it (a concurrent creator may win; upsert tolerates that)
            client.upsert_global_concurrency_limit_by_name(name, limit=1)
    return name


def _store(out_dir: str | Path, target) -> MeasurementStore:
    return MeasurementStore(store_path(Path(out_dir) / "measurements", target))


def _fit(cfg) -> tuple[int, int] | None:
    """(count, seed) of each space's model networks; None where the model is the table alone."""
    return (cfg.model.fit_networks, cfg.model.seed) if cfg.model.kind == "pairwise" else None


def _plan(cfg, num_classes: int) -> dict:
    f = cfg.fidelity
    return planned_units(cfg.spaces, cfg.input_size.hw, num_classes, (f.space, f.num_networks, f.seed), _fit(cfg))


def pool_store(cfg, out_dir: str | Path) -> PoolStore:
    """Every device's stored measurements under the configured protocol, in pool order."""
    return PoolStore([_store(out_dir, build_target(d)) for d in cfg.devices()])


def target_label(cfg) -> str:
    return ", ".join(build_target(d).name for d in cfg.devices())


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
    """Holding the device's slot: apply the power mode if asked and read the device's facts, kept
    beside its measurements (which hardware produced them)."""
    target = build_target(cfg)
    with concurrency(device_slot(device_name(cfg)), occupy=1):
        start = time.time()
        with target:
            facts = {**target.facts(), "target": target.name, "protocol": target.protocol.manifest()}
        atomic_write_json(_store(out_dir, target).path.with_suffix(".facts.json"), facts)
        end = time.time()
    return {"device": device_name(cfg), "facts": facts, "start": start, "end": end}


@task(name="deal-units")
def deal_task(cfg, out_dir: str, num_classes: int) -> dict:
    """What every device of the pool measures: the units no device has stored yet, dealt out."""
    plan = _plan(cfg, num_classes)
    shares = deal(plan, set(pool_store(cfg, out_dir).records), len(cfg.devices()))
    return {"shares": shares, "units": {name: len(units) for name, units in plan.items()}}


@task(name="measure-device", retry_condition_fn=only_transient)
def measure_device_task(cfg, out_dir: str, share: dict[str, list[str]], num_classes: int, tag: str = "") -> dict:
    """Holding the device's slot, time its share (unit keys by space, and the fidelity networks);
    each result is stored as it arrives, so a retry or a rerun measures only the rest."""
    plan = {name: {u.key: u for u in units} for name, units in _plan(cfg, num_classes).items()}
    target = build_target(cfg)
    store = _store(out_dir, target)
    log = (lambda m: print(m.replace("[profile]", f"[profile {tag}]"))) if tag else print
    stats = {}
    # each table in a call of its own; every whole network (the models' and the fidelity check's) in one
    # call, interleaved over the rounds: a shared device's speed drifts over minutes, and the models'
    # intercept and scale must see the speed their held-out networks are measured at
    calls: dict[str, list] = {}
    for name, keys in share.items():
        calls.setdefault(NETWORKS if name == FIDELITY or name.startswith("model:") else name, []).extend(
            plan[name][k] for k in keys)
    with concurrency(device_slot(device_name(cfg)), occupy=1):
        start = time.time()
        for name, units in calls.items():
            if units:
                stats[name] = measure_units(target, units, store, Path(out_dir) / "onnx",
                                            retries=cfg.retries, backoff_s=cfg.backoff_s, log=log)
        end = time.time()
    return {"device": device_name(cfg), "stats": stats, "start": start, "end": end}


@task(name="latency-tables")
def latency_tables_task(cfg, out_dir: str, num_classes: int) -> dict[str, dict]:
    """Every configured space's table from all devices' measurements; their totals."""
    store = pool_store(cfg, out_dir)
    summaries = {}
    # the folder is written whole (a temporary folder renamed over the old one): the table of a
    # space no longer configured does not linger in the stage's output
    with atomic_dir(Path(out_dir) / TABLES) as tmp:
        for space in cfg.spaces:
            base = build_cost_table(space, cfg.input_size.hw, num_classes)
            table = latency_table(base, store)
            path = latency_table_path(out_dir, space)
            write_cost_table(table, tmp / path.name)
            model = _model(cfg, table, store, space, num_classes)
            write_model(model, tmp / model_path(path).name)
            matrix, fixed = cost_matrix(table, "latency_ms")
            summaries[space] = {"path": str(path), "model": str(model_path(path)), "rows": len(table),
                                "fixed_ms": fixed, "min_ms": fixed + matrix.min(axis=1).sum(),
                                "max_ms": fixed + matrix.max(axis=1).sum(),
                                **{f"model_{k}": v for k, v in model.info.items() if isinstance(v, (int, float))}}
    return summaries


def _model(cfg, table, store, space: str, num_classes: int) -> CostModel:
    """`space`'s latency model: fitted on its measured model networks, or the table alone (kind table)."""
    archs = fit_networks(space, _fit(cfg))
    if not archs:
        return table_model(table, "latency_ms")
    measured = stored_network_latencies(store, archs, cfg.input_size.hw, num_classes)
    return fit_latency_model(table, archs, measured, ridge=cfg.model.ridge)


@task(name="latency-fidelity")
def fidelity_task(cfg, out_dir: str, num_classes: int) -> dict:
    """The table's and the model's predictions against held-out whole networks the device(s)
    measured (none of them fitted); metrics side by side and a scatter plot of both."""
    f, hw = cfg.fidelity, cfg.input_size.hw
    path = latency_table_path(out_dir, f.space)
    table, model = read_cost_table(path), read_model(model_path(path))
    archs = held_out_networks((f.space, f.num_networks, f.seed), _fit(cfg))
    measured = stored_network_latencies(pool_store(cfg, out_dir), archs, hw, num_classes)
    by_table = predicted_latencies(table, archs)
    by_model = [model.predict(a) for a in archs]
    result = {"held_out": len(archs), "fitted": model.info.get("networks", 0), "space": f.space, "seed": f.seed,
              "target": target_label(cfg), "model_kind": model.info.get("kind", "table"),
              "table": fidelity_metrics(by_table, measured), "model": fidelity_metrics(by_model, measured),
              "networks": [{"choices": list(a.choices), "table_ms": t, "model_ms": p, "measured_ms": m}
                           for a, t, p, m in zip(archs, by_table, by_model, measured)]}
    scatter_plot({"table": by_table, f"model ({result['model_kind']})": by_model}, measured,
                 Path(out_dir) / FIDELITY_PLOT,
                 f"{f.space} {hw[0]}x{hw[1]} on {result['target']}: {len(archs)} held-out networks")
    atomic_write_json(Path(out_dir) / FIDELITY_JSON, result)
    return result

