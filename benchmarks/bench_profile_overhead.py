"""Profiling overhead of a full space (issue 5): the share of a profile's wall time that is not
the timed runs (ONNX export, transfer, runner start, session creation, warm-up), measured from
scratch (no cached ONNX files, no stored measurements) in one run.

  .venv/bin/python benchmarks/bench_profile_overhead.py [--space small] [--size 256 512]
      [--runs 50] [--min-time 0.3] [--clock thread|wall] [--optimization extended|all] [--out DIR]
(defaults: the protocol of params.yaml's latency section)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from nas_core.cost.latency import MeasurementStore, profile_space, store_path
from nas_core.cost.targets import LocalTarget, MeasurementProtocol


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="small")
    ap.add_argument("--size", type=int, nargs=2, default=(256, 512), metavar=("H", "W"))
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--min-time", type=float, default=0.5)
    ap.add_argument("--clock", choices=("wall", "thread"), default="thread")
    ap.add_argument("--optimization", choices=("basic", "extended", "all"), default="extended")
    ap.add_argument("--out", default=None, help="keep the ONNX files and measurements here (default: a temp dir)")
    args = ap.parse_args()

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    shutil.rmtree(out / "onnx", ignore_errors=True)
    target = LocalTarget(MeasurementProtocol(warmup=args.warmup, runs=args.runs, min_time_s=args.min_time,
                                             clock=args.clock, optimization=args.optimization))
    path = store_path(out / "measurements", target)
    path.unlink(missing_ok=True)
    store = MeasurementStore(path)
    t0 = time.perf_counter()
    _, stats = profile_space(args.space, tuple(args.size), 19, target, store, out / "onnx", log=lambda s: None)
    wall = time.perf_counter() - t0
    setup = sum(r.get("setup_s", 0.0) for r in store.records.values())
    other = wall - stats["export_s"] - setup - stats["warmup_s"] - stats["timed_s"]
    report = {"space": args.space, "size": list(args.size), "units": stats["units"], "clock": args.clock,
              "optimization": args.optimization, "wall_s": wall,
              "export_s": stats["export_s"], "session_setup_s": setup, "warmup_s": stats["warmup_s"],
              "timed_s": stats["timed_s"], "other_s (runner start, I/O, store writes)": other,
              "overhead_excluding_warmup": 1 - (stats["timed_s"] + stats["warmup_s"]) / wall,
              "overhead_including_warmup": 1 - stats["timed_s"] / wall, "cpu_count": os.cpu_count(),
              "load_average": os.getloadavg()[0]}
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in report.items()}, indent=1))
    print(f"overhead (export, process start, sessions, I/O) = {100 * report['overhead_excluding_warmup']:.1f}% "
          f"of {wall:.1f} s; with warm-up counted as overhead too: {100 * report['overhead_including_warmup']:.1f}%")
    if not args.out:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
