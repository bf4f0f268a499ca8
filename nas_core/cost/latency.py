"""The profile loop behind a latency cost table (paper section 5.2): measure what is missing,
keep every result on disk as it arrives, retry dropped connections with backoff, resume.

Measurements live in a `MeasurementStore` keyed by shape key, one file per target and protocol,
rewritten atomically after each result: an interrupted profile loses at most the run in flight,
and a rerun (or a reconnect) measures only what is missing. The table is assembled from it.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import time
from pathlib import Path
from typing import Callable

import pandas as pd

from nas_core.cost.export import (
    OPSET,
    Unit,
    export_onnx,
    is_zero_cost,
    network_key,
    network_unit,
    onnx_filename,
    table_units,
)
from nas_core.cost.macs import build_cost_table, validate_cost_table
from nas_core.cost.targets import Job, Target, TransientError
from nas_core.io import atomic_write_text
from nas_core.space.spaces import Architecture, SearchSpace, get_space

LATENCY_COLUMNS = ("latency_ms", "latency_p10_ms", "latency_p90_ms", "runs")


class MeasurementStore:
    """Records of one target + protocol by unit key, kept in a JSON-lines file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: dict[str, dict] = {}
        if self.path.is_file():
            for n, line in enumerate(self.path.read_text().splitlines(), 1):
                try:
                    rec = json.loads(line)
                    self.records[rec["key"]] = rec
                except (ValueError, KeyError, TypeError):
                    raise ValueError(f"{self.path}:{n}: not a measurement record; "
                                     "delete the file to re-measure") from None

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def add(self, rec: dict) -> None:
        self.records[rec["key"]] = rec
        atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records.values()))


def store_path(directory: str | Path, target: Target) -> Path:
    """The store of `target`'s measurements under its protocol: a readable name plus a hash."""
    ident = json.dumps({"target": target.name, **target.protocol.manifest()}, sort_keys=True)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", target.name).strip("_")
    return Path(directory) / f"{slug}-{target.protocol.backend}-{hashlib.sha1(ident.encode()).hexdigest()[:10]}.jsonl"


def _jobs(units: list[Unit], onnx_dir: Path, needs_onnx: bool, opset: int, log) -> tuple[list[Job], float]:
    """Jobs for `units`, exporting the ONNX files not already cached; (jobs, seconds spent)."""
    t0, jobs = time.perf_counter(), []
    for unit in units:
        path = onnx_dir / f"opset{opset}" / onnx_filename(unit.key) if needs_onnx else None
        if path is not None and not path.is_file():
            export_onnx(unit, path, opset)
        jobs.append(Job(unit, path))
    spent = time.perf_counter() - t0
    if needs_onnx and units:
        log(f"[profile] {len(units)} model(s) ready in {spent:.1f} s")
    return jobs, spent


def measure_units(target: Target, units: list[Unit], store: MeasurementStore, onnx_dir: str | Path, *,
                  opset: int = OPSET, retries: int = 3, backoff_s: float = 2.0,
                  on_result: Callable[[dict], None] | None = None, log: Callable[[str], None] = print) -> dict:
    """Measure every unit missing from `store` on `target`, resuming after transient failures.

    Returns wall-clock accounting: `wall_s`, `export_s`, `timed_s` (the timed runs alone),
    `warmup_s`, `measured` (units measured by this call) and `overhead` (share of `wall_s` that
    is not timed runs or warm-up: export, transfer, process start, session creation).
    """
    t0, export_s, failures, counted = time.perf_counter(), 0.0, 0, {"timed_s": 0.0, "warmup_s": 0.0, "measured": 0}
    total = len(units)

    said = [0.0]

    def arrived(rec: dict) -> None:
        store.add(rec)  # on disk before anything else happens
        counted["timed_s"] += rec.get("timed_s", 0.0)
        counted["warmup_s"] += rec.get("warmup_s", 0.0)
        counted["measured"] += 1
        done = sum(u.key in store for u in units)
        # streamed results: the time left at their pace so far; after interleaved rounds they all come at once
        eta = "" if call[1] else _eta(time.perf_counter() - t0, counted["measured"], total - done)
        log(f"[profile] {done}/{total} {rec['key']}: {rec['latency_ms']:.3f} ms{eta}")
        if on_result:
            on_result(rec)

    def rounds_progress(done: int, steps: int) -> None:  # interleaved rounds: the results come at the end
        now = time.perf_counter()
        call[1] = True
        if now - said[0] >= 10.0 or done == steps:
            said[0] = now
            log(f"[profile] interleaved rounds {100 * done / steps:.0f}% of {steps} model steps"
                f"{_eta(now - call[0], done, steps - done)}")

    call = [t0, False]  # this measure call's start; whether it reported interleaved rounds

    try:
        while True:
            missing = [u for u in units if u.key not in store]
            if not missing:
                break
            jobs, spent = _jobs(missing, Path(onnx_dir), target.needs_onnx, opset, log)
            export_s += spent
            before = len(store)
            try:
                target.open()
                target.on_progress, call[0], call[1] = rounds_progress, time.perf_counter(), False
                target.measure(jobs, arrived)
            except TransientError as e:
                target.close()
                failures = 1 if len(store) > before else failures + 1  # progress resets the count
                if failures > retries:
                    raise TransientError(f"{e} (gave up after {retries} retries)") from None
                delay = backoff_s * 2 ** (failures - 1)
                log(f"[profile] {e}; {len(units) - sum(u.key in store for u in units)} left, "
                    f"reconnecting in {delay:g} s (retry {failures}/{retries})")
                time.sleep(delay)
    finally:
        try:
            target.cleanup()
        except Exception as e:  # a failed cleanup must not hide the result or the real error
            log(f"[profile] could not remove the remote files: {e}")
        target.close()
    wall = time.perf_counter() - t0
    busy = counted["timed_s"] + counted["warmup_s"]
    return {"wall_s": wall, "export_s": export_s, **counted, "units": total,
            "overhead": (wall - busy) / wall if wall > 0 and counted["measured"] else 0.0}


def _eta(elapsed_s: float, done: int, left: int) -> str:
    """', about N s left' at the pace so far (nothing before the first result or after the last)."""
    if done <= 0 or left <= 0:
        return ""
    s = elapsed_s / done * left
    return f", about {s / 60:.0f} min left" if s >= 120 else f", about {s:.0f} s left"


def latency_table(base: pd.DataFrame, store: MeasurementStore) -> pd.DataFrame:
    """The cost table `base` with latency columns filled from `store` (0 ms where nothing runs)."""
    space = get_space(base["space"].iloc[0])
    df = base.copy()
    zero = [is_zero_cost(row, space) for row in df.itertuples(index=False)]
    missing = sorted({k for k, z in zip(df["shape_key"], zero) if not z and k not in store})
    if missing:
        raise ValueError(f"{store.path}: {len(missing)} shape(s) not measured, e.g. {missing[:3]}")
    for col in LATENCY_COLUMNS:
        values = [0 if z else store.records[k].get(col, math.nan) for k, z in zip(df["shape_key"], zero)]
        df[col] = pd.Series(values, index=df.index, dtype="int64" if col == "runs" else "float64")
    validate_cost_table(df, str(store.path))
    return df


def profile_space(space: str | SearchSpace, input_size: tuple[int, int], num_classes: int, target: Target,
                  store: MeasurementStore, onnx_dir: str | Path, **kw) -> tuple[pd.DataFrame, dict]:
    """The latency table of `space` at `input_size` on `target`, and the profile's accounting."""
    base = build_cost_table(space, input_size, num_classes)
    stats = measure_units(target, table_units(base, space), store, onnx_dir, **kw)
    return latency_table(base, store), stats


def measure_networks(archs: list[Architecture], input_size: tuple[int, int], num_classes: int, target: Target,
                     store: MeasurementStore, onnx_dir: str | Path, **kw) -> list[float]:
    """End-to-end latency (ms) of each whole network, with the same protocol as the table."""
    units = [network_unit(a, input_size, num_classes) for a in archs]
    measure_units(target, list({u.key: u for u in units}.values()), store, onnx_dir, **kw)
    return stored_network_latencies(store, archs, input_size, num_classes)


def stored_network_latencies(store, archs: list[Architecture], input_size: tuple[int, int],
                             num_classes: int) -> list[float]:
    """The stored end-to-end latency (ms) of each whole network (a MeasurementStore, or a pool's
    union of stores); an error naming the store if any was not measured."""
    keys = [network_key(a, input_size, num_classes) for a in archs]
    missing = [k for k in keys if k not in store]
    if missing:
        raise ValueError(f"{store.path}: {len(missing)} fidelity network(s) not measured, e.g. {missing[0]}")
    return [store.records[k]["latency_ms"] for k in keys]
