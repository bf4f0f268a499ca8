"""Search step throughput through the real `run_search` (paper section 5.3.1): fp32 vs automatic
mixed precision, measured in one run on the same supernet, data and seed.

Each mode runs `--epochs` epochs of `--steps` batches of the paper's 768x768 patches (random
images and labels held in memory, so the loader costs nothing); the first epoch is the warm-up
(cuDNN's algorithm choice, allocations) and the images/s figure is taken over the others from the
epochs' own `seconds`. Also reported: the allocator's peak, and whether theta stayed finite (AMP's
loss scaling must never push a NaN into theta).

    python benchmarks/bench_search_amp.py --device cuda --spaces small,large --batch 8
    python benchmarks/bench_search_amp.py --size 128 --batch 2 --steps 2   # CPU smoke run (no AMP there)
"""
from __future__ import annotations

import argparse
import json
import tempfile

import torch
from torch.utils.data import Dataset

from nas_core.config import SearchParams
from nas_core.cost.macs import build_cost_table, cost_matrix
from nas_core.search.data import search_loader
from nas_core.search.loop import run_search, search_config
from nas_core.search.supernet import build_supernet

GIB = 1024 ** 3


class RandomPatches(Dataset):
    """`n` fixed random (image, label) pairs: the loader does no work, the step is all that is timed."""

    def __init__(self, n: int, size: int, classes: int = 19) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, size, size, generator=g)
        self.y = torch.randint(0, classes, (n, size, size), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def one_search(space: str, size: int, batch: int, steps: int, epochs: int, amp: bool, device: torch.device) -> dict:
    torch.manual_seed(0)
    net = build_supernet(space).to(device)
    cost = cost_matrix(build_cost_table(space, (size, size)))[0]
    loader = search_loader(RandomPatches(batch * steps, size), batch, device=device)
    config = search_config(SearchParams(epochs=epochs, alpha=0.2, amp=amp, prune_threshold=0.0, log_every=10 ** 9))
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as tmp:
        result = run_search(net, loader, cost, config, tmp, log=lambda s: None)
    seconds = result.curves["seconds"].tolist()[1:]
    images = batch * steps * len(seconds)
    theta = torch.stack([b.theta.detach() for b in net.blocks])
    return {"images_per_s": images / sum(seconds), "epoch_seconds": result.curves["seconds"].tolist(),
            "peak_gib": torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None,
            "theta_finite": bool(torch.isfinite(theta).all()), "final_ce": float(result.curves["ce"].iloc[-1])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--spaces", default="small")
    p.add_argument("--size", type=int, default=768)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=6, help="batches per epoch")
    p.add_argument("--epochs", type=int, default=3, help="the first is the warm-up")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    modes = (False, True) if device.type == "cuda" else (False,)
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "size": a.size, "batch": a.batch, "spaces": {}}
    for space in a.spaces.split(","):
        r = {}
        for amp in modes:
            r["amp" if amp else "fp32"] = m = one_search(space, a.size, a.batch, a.steps, a.epochs, amp, device)
            peak = f", peak {m['peak_gib']:.1f} GiB" if m["peak_gib"] is not None else ""
            print(f"{space} {'AMP ' if amp else 'fp32'}: {m['images_per_s']:.1f} img/s{peak}, theta finite "
                  f"{m['theta_finite']}, ce {m['final_ce']:.3f}", flush=True)
        if "amp" in r:
            r["amp_speedup"] = r["amp"]["images_per_s"] / r["fp32"]["images_per_s"]
            print(f"{space}: AMP / fp32 throughput = {r['amp_speedup']:.2f}x", flush=True)
        results["spaces"][space] = r
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
