"""Evaluating N sampled architectures through the `sample` stage (paper section 5.3.1) vs the sum of
plain forward passes of the N extracted networks over the same val images, and the speed-up of
parallel workers. All three are measured in this one run, on this machine.

  plain:     extract each network, time only its forward passes over the preloaded val batches
  stage x1:  `sample_flow` with 1 thread worker: drawing, supernet paths, Prefect task scheduling,
             the resumable log, costs, parquet, MLflow
  stage xW:  the same with W thread workers
All with 1 torch thread per worker: on a shared machine, more OpenMP threads than free cores make
every op wait on the slowest one. The three are interleaved chunk by chunk (--chunk), the stage
resuming its own log, so that a change in the machine's load hits all three alike.

Usage: python benchmarks/bench_sample_eval.py [--num 200] [--workers 2] [--val 12] [--chunk 50]
       [--search-dir DIR]
Without --search-dir the supernet is a Small supernet with random theta, some candidates pruned
and non-trivial BN statistics (the speed does not depend on how well it was trained).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from nas_core.cost.macs import build_cost_table, write_cost_table  # noqa: E402
from nas_core.data import CityscapesSegmentation, generate_cityscapes  # noqa: E402
from nas_core.io import atomic_torch_save, atomic_write_parquet  # noqa: E402
from nas_core.search.loop import theta_rows  # noqa: E402
from nas_core.search.supernet import build_supernet, extract_network  # noqa: E402
from nas_core.space.spaces import Architecture  # noqa: E402

PARAMS = """\
paths: {{dataset: cityscapes, search: search, cost_tables: cost_tables, latency: latency, samples: samples}}
tracking: {{mlflow_uri: 'sqlite:///mlflow.db', experiment: bench}}
sample: {{num_samples: {num}, workers: {workers}, batch_size: {batch}, device: cpu}}
"""


def synthetic_search(out: Path, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    supernet = build_supernet("small", 19)
    with torch.no_grad():
        for block in supernet.blocks:
            block.theta.copy_(torch.randn(13, generator=g) * 1.5)
        for m in supernet.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    supernet.prune(0.02)
    atomic_torch_save(out / "supernet.pt", {"format": "squeezenas.supernet.v1", "space": "small", "num_classes": 19,
                                            "live_mask": supernet.live_mask(), "supernet": supernet.state_dict()})
    atomic_write_parquet(out / "theta.parquet", pd.DataFrame(theta_rows(supernet, 1)))


def plain_seconds(root: Path, choices: list[str], batch: int) -> tuple[float, float]:
    """(forward passes, scoring) of the extracted networks over the preloaded val batches: the
    scoring (argmax + confusion matrix) is what any mIoU evaluation adds to the forward passes."""
    from nas_core.engine.evaluate import class_map
    from nas_core.engine.metrics import ConfusionMatrix
    from nas_core.select.sampling import load_supernet

    supernet = load_supernet(root / "search" / "supernet.pt")
    val = CityscapesSegmentation(root / "cityscapes", "val")
    batches = [(torch.stack([val[i][0] for i in range(s, min(s + batch, len(val)))]),
                torch.stack([val[i][1] for i in range(s, min(s + batch, len(val)))]).to(torch.uint8))
               for s in range(0, len(val), batch)]
    forward = scoring = 0.0
    with torch.no_grad():
        for c in choices:
            net = extract_network(supernet, Architecture("small", c.split(","))).eval()
            matrix = ConfusionMatrix(19)
            for x, y in batches:
                tic = time.perf_counter()
                logits = net(x)
                toc = time.perf_counter()
                matrix.update(class_map(logits), y)
                forward, scoring = forward + toc - tic, scoring + time.perf_counter() - toc
    return forward, scoring


def stage_seconds(num: int, workers: int, threads: int, samples_dir: str) -> tuple[float, pd.DataFrame]:
    """`sample_flow` for the first `num` samples; those already in `samples_dir`'s log are not redone."""
    from flows.sample import sample_flow

    metrics = sample_flow("params.yaml", (f"sample.num_samples={num}", f"sample.workers={workers}",
                                         f"sample.threads_per_worker={threads}", f"paths.samples={samples_dir}"))
    return metrics["seconds"], pd.read_parquet(Path(samples_dir) / "samples.parquet")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--val", type=int, default=12, help="generated val images (256x512)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=50, help="samples per interleaved measurement")
    ap.add_argument("--search-dir", type=Path, help="a search stage's output folder (supernet.pt, theta.parquet)")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "search").mkdir()
        if args.search_dir:
            for name in ("supernet.pt", "theta.parquet"):
                (root / "search" / name).write_bytes((args.search_dir / name).read_bytes())
        else:
            synthetic_search(root / "search")
        generate_cityscapes(root / "cityscapes", 2, args.val, 0, (256, 512), 0)
        write_cost_table(build_cost_table("small"), root / "cost_tables" / "macs_small.parquet")
        (root / "params.yaml").write_text(PARAMS.format(num=args.num, workers=1, batch=args.batch))
        os.chdir(root)
        torch.set_num_threads(1)
        print(f"[bench] {args.num} architectures x {args.val} val images (256x512), {cores} cores, "
              f"load average {os.getloadavg()[0]:.1f}")
        # interleaved chunks, so that a change in the machine's load hits all three measurements alike;
        # the stage evaluates only each chunk's new samples (its resume), its start-up cost counted each time
        stage1 = stagew = plain = scoring = 0.0
        bounds = sorted({*range(0, args.num, args.chunk), args.num})
        for lo, hi in zip(bounds, bounds[1:]):
            t1, df = stage_seconds(hi, 1, 1, "samples_1")
            tw, dfw = stage_seconds(hi, args.workers, 1, f"samples_{args.workers}")
            f, sc = plain_seconds(root, df["choices"].tolist()[lo:hi], args.batch)
            stage1, stagew, plain, scoring = stage1 + t1, stagew + tw, plain + f, scoring + sc
            print(f"[bench] samples {lo}-{hi}: stage x1 {t1:.1f} s, stage x{args.workers} {tw:.1f} s, plain {f:.1f} s "
                  f"+ scoring {sc:.1f} s (load average {os.getloadavg()[0]:.1f})", flush=True)
        print(f"[bench] max |mIoU(1 worker) - mIoU({args.workers} workers)| = "
              f"{(dfw['class_miou'] - df['class_miou']).abs().max():.2e}")
        print(f"[bench] totals: stage x1 {stage1:.1f} s, stage x{args.workers} {stagew:.1f} s, plain forwards "
              f"{plain:.1f} s, scoring {scoring:.1f} s")
        print(f"ratio stage(1 worker) / plain forwards: {stage1 / plain:.3f}  (bar: <= 1.3)")
        print(f"ratio stage(1 worker) / (plain forwards + scoring): {stage1 / (plain + scoring):.3f}")
        print(f"speed-up {args.workers} workers x 1 thread vs 1 worker x 1 thread on {cores} cores: "
              f"{stage1 / stagew:.2f}x")


if __name__ == "__main__":
    main()
