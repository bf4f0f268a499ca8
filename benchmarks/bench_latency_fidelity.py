"""Fidelity of the latency table and of the latency model over it (issue 16) on this machine's CPU:
profile a space, measure K whole networks to fit the model and N others held out, all with the same
protocol, and compare on the held-out ones: nn-Meter's metrics (RMSE, RMSPE, share within +-10%),
MAPE and Kendall tau, the table and the model side by side. --repeat measures the held-out networks
a second time (a fresh store): the Kendall tau between the two measurements is the ceiling any
predictor can reach on this device (its measurement noise).

  .venv/bin/python benchmarks/bench_latency_fidelity.py [--space small] [--size 256 512] [-k 30] [--fit 12]
      [--clock thread|wall] [--optimization extended|all] [--rounds 10] [--runs 50] [--min-time 0.5]
      [--repeat] [--json FILE] [--out outputs/bench_fidelity]
(defaults: the protocol of params.yaml's latency section)
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from nas_core.cost.fidelity import fidelity_metrics, predicted_latencies, scatter_plot
from nas_core.cost.latency import MeasurementStore, measure_networks, profile_space, store_path
from nas_core.cost.model import fit_latency_model
from nas_core.cost.pool import fit_networks, held_out_networks
from nas_core.cost.targets import LocalTarget, MeasurementProtocol, TorchCudaTarget


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="small")
    ap.add_argument("--size", type=int, nargs=2, default=(256, 512), metavar=("H", "W"))
    ap.add_argument("-k", type=int, default=30, help="held-out networks")
    ap.add_argument("--fit", type=int, default=12, help="networks the model is fitted on")
    ap.add_argument("--ridge", type=lambda v: v if v == "auto" else float(v), default="auto",
                    help="the junction terms' ridge, or auto (least leave-one-out error)")
    ap.add_argument("--repeat", action="store_true", help="measure the held-out networks twice (noise ceiling)")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clock", choices=("wall", "thread"), default="thread")
    ap.add_argument("--backend", choices=("onnxruntime", "torch_cuda"), default="onnxruntime")
    ap.add_argument("--cuda-graph", action="store_true", help="torch_cuda: time each model inside a CUDA graph")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=10, help="interleave all models over this many rounds")
    ap.add_argument("--optimization", choices=("basic", "extended", "all"), default="extended")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--min-time", type=float, default=0.5, help="minimum timed seconds per model")
    ap.add_argument("--out", default="outputs/bench_fidelity")
    ap.add_argument("--fresh", action="store_true", help="ignore measurements stored by an earlier run")
    args = ap.parse_args()

    protocol = MeasurementProtocol(backend=args.backend, warmup=args.warmup, runs=args.runs, min_time_s=args.min_time,
                                   clock=args.clock, threads=1, optimization=args.optimization, rounds=args.rounds,
                                   cuda_graph=args.cuda_graph)
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
    fit_archs = fit_networks(args.space, (args.fit, args.seed + 1))
    archs = held_out_networks((args.space, args.k, args.seed), (args.fit, args.seed + 1))
    # the fitted and the held-out networks in one call, interleaved over the rounds: a shared machine's
    # speed drifts over minutes, and the model's intercept and scale must see the same speed as its test
    both = measure_networks(fit_archs + archs, tuple(args.size), 19, target, store, out / "onnx", log=quiet)
    measured_fit, measured = both[:len(fit_archs)], both[len(fit_archs):]
    model = fit_latency_model(table, fit_archs, measured_fit, ridge=args.ridge)
    by_table, by_model = predicted_latencies(table, archs), [model.predict(a) for a in archs]
    result = {"held_out": len(archs), "fitted": len(fit_archs), "table": fidelity_metrics(by_table, measured),
              "model": fidelity_metrics(by_model, measured), "coefficients": model.info}
    for a, t, p, m in zip(archs, by_table, by_model, measured):
        print(f"  {'-'.join(c.replace('_', '') for c in a.choices)[:50]:50s} meas {m:7.3f}  table {t:7.3f} "
              f"({100 * (t - m) / m:+5.1f}%)  model {p:7.3f} ({100 * (p - m) / m:+5.1f}%)")
    if args.repeat:  # the same networks again, from a fresh store: how far the device agrees with itself
        again_store = MeasurementStore(store_file.with_suffix(".repeat.jsonl"))
        if args.fresh:
            again_store.path.unlink(missing_ok=True)
            again_store = MeasurementStore(again_store.path)
        again = measure_networks(archs, tuple(args.size), 19, target, again_store, out / "onnx", log=quiet)
        result["repeat"] = fidelity_metrics(again, measured)
    print(json.dumps({k: {n: round(v, 4) if isinstance(v, float) else v for n, v in d.items()}
                      if isinstance(d, dict) else d for k, d in result.items()}, indent=1, default=str))
    for who in ("table", "model") + (("repeat",) if args.repeat else ()):
        m = result[who]
        print(f"{who:6s}: Kendall tau {m['kendall_tau']:.3f}, within 10% {100 * m['within_10pct']:.0f}%, "
              f"MAPE {100 * m['mape']:.1f}%  bar (tau >= 0.9 and >= 90% within 10%): "
              f"{'PASS' if m['kendall_tau'] >= 0.9 and m['within_10pct'] >= 0.9 else 'FAIL'}")
    print(f"ratios model/table: MAPE {result['model']['mape'] / result['table']['mape']:.2f}, RMSPE "
          f"{result['model']['rmspe'] / result['table']['rmspe']:.2f}; clock {args.clock}, optimization "
          f"{args.optimization}, rounds {args.rounds}, runs {args.runs}, {args.space} {args.size[0]}x{args.size[1]}, "
          f"load average {os.getloadavg()[0]:.2f}, total {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({**result, "args": vars(args)}, indent=1, default=str))
    if args.backend == "torch_cuda":  # host time of the call alone: what timing without a sync reports
        from nas_core.cost.export import network_unit

        launch = [store.records[network_unit(a, tuple(args.size), 19).key]["launch_ms"] for a in archs]
        print(f"networks: median CUDA-event time {sorted(measured)[len(measured) // 2]:.3f} ms, host-side "
              f"launch time without synchronising {sorted(launch)[len(launch) // 2]:.3f} ms")
    plot = out / f"fidelity_{args.space}_{args.backend}_{args.clock}_{args.optimization}.png"
    scatter_plot({"table": by_table, "model": by_model}, measured, plot,
                 f"{args.space} {args.size[0]}x{args.size[1]}, {target.name}, {args.backend}, {args.optimization}")


if __name__ == "__main__":
    main()
