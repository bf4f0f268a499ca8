"""Training throughput (images/s) of the retraining step (paper section 5.3.2: SGD, 768x768 patches,
mixed precision) at a fixed patch: forward, cross-entropy, backward and SGD step on synthetic data.

On CPU it compares torch thread counts; with --device cuda it compares float32 with AMP (float16
autocast + loss scaling, as nas_core.engine.precision runs it), all in one run, and prints the ratios.

  python benchmarks/bench_train_throughput.py --patch 256 --batch 8
  python benchmarks/bench_train_throughput.py --device cuda --patch 768 --batch 8
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from nas_core.engine.precision import autocast
from nas_core.space.mobilenetv3 import VARIANTS, mobilenetv3_lraspp
from nas_core.space.zoo import published_network


def images_per_s(name: str, device: str, patch: tuple[int, int], batch: int, steps: int, warmup: int,
                 amp: bool) -> float:
    torch.manual_seed(0)
    model = mobilenetv3_lraspp(name) if name in VARIANTS else published_network(name)
    model.to(device).train()
    if device == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-5)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device == "cuda")
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, 3, *patch, generator=g).to(device)
    y = torch.randint(0, 19, (batch, *patch), generator=g).to(device)
    if device == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with autocast(torch.device(device), amp):
            loss = F.cross_entropy(model(x), y, ignore_index=255)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["squeezenas_lat_small", "mobilenetv3_large"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--patch", type=int, default=256, help="square patch side (the paper: 768)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU: torch thread counts to compare")
    a = p.parse_args()
    if a.device == "cuda":
        torch.backends.cudnn.benchmark = True
        print(f"# {torch.cuda.get_device_name()} torch {torch.__version__}, patch {a.patch}, batch {a.batch}")
        variants = [("fp32", dict(amp=False)), ("amp", dict(amp=True))]
    else:
        print(f"# CPU torch {torch.__version__}, patch {a.patch}, batch {a.batch}")
        variants = [(f"{t} threads", dict(amp=False, threads=t)) for t in a.threads]
    results = {}
    for name in a.models:
        for label, opts in variants:
            if "threads" in opts:
                torch.set_num_threads(opts["threads"])
            ips = images_per_s(name, a.device, (a.patch, a.patch), a.batch, a.steps, a.warmup, opts["amp"])
            results[(name, label)] = ips
            print(f"{name:24s} {label:10s} {ips:8.2f} images/s")
        base, last = variants[0][0], variants[-1][0]
        print(f"{name:24s} ratio {last} / {base}: {results[(name, last)] / results[(name, base)]:.2f}x")
    print(json.dumps({"device": a.device, "patch": a.patch, "batch": a.batch,
                      "images_per_s": {f"{n}|{v}": round(r, 3) for (n, v), r in results.items()}}))


if __name__ == "__main__":
    main()
