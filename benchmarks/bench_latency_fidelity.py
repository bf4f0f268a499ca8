"""Fidelity of the additive latency table on this machine's CPU (paper section 4.3 assumes block
costs add up): profile a space, measure K sampled whole networks end to end with the same
protocol, and compare. Prints nn-Meter's metrics (RMSE, RMSPE, share within +-10%) and Kendall tau.

  .venv/bin/python benchmarks/bench_latency_fidelity.py [--space small] [--size 256 512] [-k 30]
      [--clock thread|wall] [--optimization extended|all] [--rounds 10] [--runs 50] [--min-time 0.5]
      [--out outputs/bench_fidelity]
(defaults: the protocol of params.yaml's latency section)
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from nas_core.cost.fidelity import fidelity_metrics, predicted_latencies, scatter_plot, uniform_architectures
from nas_core.cost.latency import MeasurementStore, measure_networks, profile_space, store_path
from nas_core.cost.targets import LocalTarget, MeasurementProtocol, TorchCudaTarget


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="small")
    ap.add_argument("--size", type=int, nargs=2, default=(256, 512), metavar=("H", "W"))
    ap.add_argument("-k", type=int, default=30, help="sampled networks")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clock", choices=("wall", "thread"), default="thread")
    ap.add_argument("--backend", choices=("onnxruntime", "torch_cuda"), default="onnxruntime")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=10, help="interleave all models over this many rounds")
    ap.add_argument("--optimization", choices=("basic", "extended", "all"), default="extended")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--min-time", type=float, default=0.5, help="minimum timed seconds per model")
    ap.add_argument("--out", default="outputs/bench_fidelity")
    ap.add_argument("--fresh", action="store_true", help="ignore measurements stored by an earlier run")
    args = ap.parse_args()

    protocol = MeasurementProtocol(backend=args.backend, warmup=args.warmup, runs=args.runs, min_time_s=args.min_time,
                                   clock=args.clock, threads=1, optimization=args.optimization, rounds=args.rounds)
    target = TorchCudaTarget(protocol) if args.backend == "torch_cuda" else LocalTarget(protocol)
    out = Path(args.out)
    store_file = store_path(out / "measurements", target)
    if args.fresh:
        store_file.unlink(missing_ok=True)
    store = MeasurementStore(store_file)
    quiet = lambda s: None  # noqa: E731
    t0 = time.perf_counter()
    table, stats = profile_space(args.space, tuple(args.size), 19, target, store, out / "onnx", log=quiet)
    print(f"table: {stats['units']} units, {stats['wall_s']:.1f} s ({100 * stats['overhead']:.1f}% overhead)")
    archs = uniform_architectures(args.space, args.k, args.seed)
    measured = measure_networks(archs, tuple(args.size), 19, target, store, out / "onnx", log=quiet)
    predicted = predicted_latencies(table, archs)
    metrics = fidelity_metrics(predicted, measured)
    for a, p, m in zip(archs, predicted, measured):
        print(f"  {'-'.join(c.replace('_', '') for c in a.choices)[:60]:60s} pred {p:7.3f}  meas {m:7.3f}"
              f"  {100 * (p - m) / m:+5.1f}%")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}, indent=1))
    if args.backend == "torch_cuda":  # host time of the call alone: what timing without a sync reports
        from nas_core.cost.export import network_unit

        launch = [store.records[network_unit(a, tuple(args.size), 19).key]["launch_ms"] for a in archs]
        print(f"networks: median CUDA-event time {sorted(measured)[len(measured) // 2]:.3f} ms, host-side "
              f"launch time without synchronising {sorted(launch)[len(launch) // 2]:.3f} ms")
    print(f"bar (tau >= 0.9 and >= 90% within 10%): "
          f"{'PASS' if metrics['kendall_tau'] >= 0.9 and metrics['within_10pct'] >= 0.9 else 'FAIL'}; "
          f"clock {args.clock}, optimization {args.optimization}, rounds {args.rounds}, "
          f"{args.space} {args.size[0]}x{args.size[1]}, "
          f"load average {os.getloadavg()[0]:.2f}, "
          f"total {time.perf_counter() - t0:.0f} s")
    plot = out / f"fidelity_{args.space}_{args.backend}_{args.clock}_{args.optimization}.png"
    scatter_plot(predicted, measured, plot,
                 f"{args.space} {args.size[0]}x{args.size[1]}, {target.name}, {args.backend}, clock {args.clock}")


if __name__ == "__main__":
    main()
