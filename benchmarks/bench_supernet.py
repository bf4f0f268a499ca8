"""Supernet benchmarks (paper sections 4.1-4.2, 5.3.2), each a ratio measured in one run:

(a) mixing overhead: forward+backward of every superblock / the sum of its 13 candidates' own
    forward+backward at the same shapes (target <= 1.15);
(b) pruning: a search step with every block pruned to one live candidate / the unpruned step
    (the paper's "cuts search time in half": target <= 0.5);
(c) memory of a search step per image at the paper's 768x768 patch, and the largest batch in 24 GiB.
    CPU: saved activations counted exactly on the meta device (no compute; fp32), plus parameters,
    gradients and optimizer state. CUDA: the allocator's peak at batch 1 and 2 with AMP;
(d) fused superblock (issue 19): a search step (forward + backward + both optimizers) of the fused supernet /
    the plain one, same weights, per depthwise variant, interleaved (target on a GPU at 768x768, AMP, batch 8:
    <= 0.6; on the CPU it decides `search.fused: auto`).

    python benchmarks/bench_supernet.py                      # CPU, small space
    python benchmarks/bench_supernet.py --device cuda --spaces small,large,xlarge --size 768
    python benchmarks/bench_supernet.py --figures fused --spaces small,large,xlarge --size 128 --batch 4 --threads 1
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
import torch.nn.functional as F

from nas_core.cost.macs import build_cost_table, cost_matrix
from nas_core.search.fused import DEPTHWISE_VARIANTS
from nas_core.search.loop import resource_loss
from nas_core.search.supernet import Supernet, build_supernet
from nas_core.space.candidates import CANDIDATE_NAMES
from nas_core.space.zoo import PUBLISHED

GIB = 1024 ** 3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeats: int, warmup: bool = True) -> list[float]:
    if warmup:
        fn()  # allocations, cuDNN's algorithm choice
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return times


def _amp(device):
    return torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda")


def block_inputs(net: Supernet, x: torch.Tensor) -> list[torch.Tensor]:
    """The input each superblock sees in a forward pass at x's shape."""
    inputs = []
    hooks = [b.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach())) for b in net.blocks]
    with torch.no_grad(), _amp(x.device):
        net(x, 5.0, torch.Generator().manual_seed(0))
    for h in hooks:
        h.remove()
    return inputs


def mixing_overhead(net: Supernet, x: torch.Tensor, repeats: int) -> dict:
    """(a) Per block, the best of `repeats` of the superblock vs its candidates run one after the
    other, each with its own forward and backward (timed as one unit: a sum of per-candidate
    minima would be biased low by the noise)."""
    device = x.device
    weights = torch.softmax(torch.randn(x.shape[0], 13, device=device), -1).requires_grad_()

    def fwd_bwd(fn):
        with _amp(device):
            out = fn()
        out.backward(torch.ones_like(out))
    super_t, cand_t = 0.0, 0.0
    for block, inp in zip(net.blocks, block_inputs(net, x)):
        inp = inp.clone().requires_grad_()  # as inside the network: the gradient reaches the input too
        ops = list(block.ops.values())
        mixed = lambda: fwd_bwd(lambda: block(inp, weights))  # noqa: E731
        alone = lambda: [fwd_bwd(lambda: op(inp)) for op in ops]  # noqa: E731
        best = [float("inf")] * 2
        for _ in range(repeats):  # interleaved, so that the machine's load drifts equally over both
            for k, step in enumerate((mixed, alone)):
                best[k] = min(best[k], *_timed(step, device, 1, warmup=_ == 0))
        super_t += best[0]
        cand_t += best[1]
    return {"superblocks_s": super_t, "candidates_s": cand_t, "ratio": super_t / cand_t}


def search_step(net: Supernet, x, y, cost, opt_w, opt_t, generator) -> None:
    """One step of run_search: per-image Gumbel sample, CE + alpha * L_E, backward, both optimizers."""
    with _amp(x.device):
        logits = net(x, 3.0, generator)
    loss = F.cross_entropy(logits.float(), y, ignore_index=255) + 0.5 * resource_loss(net.probabilities(), cost, 1e9)
    opt_w.zero_grad(set_to_none=True)
    opt_t.zero_grad(set_to_none=True)
    loss.backward()
    opt_w.step()
    opt_t.step()


def pruning_speedup(space: str, x, y, repeats: int) -> dict:
    """(b) Step time of the supernet pruned to the published MAC network's candidates vs unpruned."""
    device = x.device
    cost = torch.tensor(cost_matrix(build_cost_table(space, tuple(x.shape[-2:])))[0], dtype=torch.float32,
                        device=device)
    arch = PUBLISHED[f"squeezenas_mac_{space}"]
    nets, steps = {}, {}
    for name in ("unpruned", "one_live"):
        torch.manual_seed(0)
        net = build_supernet(space).to(device)
        if name == "one_live":
            mask = torch.zeros(len(net.blocks), 13, dtype=torch.bool)
            mask[torch.arange(len(net.blocks)), [CANDIDATE_NAMES.index(c) for c in arch.choices]] = True
            net.set_live_mask(mask)
        opt_w = torch.optim.SGD(net.weight_parameters(), lr=0.01, momentum=0.9)
        opt_t = torch.optim.Adam(net.arch_parameters(), lr=0.01)
        g = torch.Generator().manual_seed(0)
        nets[name] = net
        steps[name] = (lambda n=net, a=opt_w, b=opt_t, g=g: search_step(n, x, y, cost, a, b, g))
    times = {name: [] for name in steps}
    for step in steps.values():
        step()  # warm-up
    for _ in range(repeats):
        for name, step in steps.items():
            times[name] += _timed(step, device, 1, warmup=False)
    best = {name: min(t) for name, t in times.items()}
    return {"unpruned_s": best["unpruned"], "one_live_s": best["one_live"],
            "unpruned_median_s": statistics.median(times["unpruned"]),
            "one_live_median_s": statistics.median(times["one_live"]), "ratio": best["one_live"] / best["unpruned"]}


def fused_speedup(space: str, x, y, repeats: int, variants=DEPTHWISE_VARIANTS) -> dict:
    """(d) Search step of the fused supernet (each depthwise variant) / the plain one: copies of one supernet,
    each with its own optimizers and the same Gumbel seeds, timed in turn every repeat (best and median)."""
    device = x.device
    cost = torch.tensor(cost_matrix(build_cost_table(space, tuple(x.shape[-2:])))[0], dtype=torch.float32,
                        device=device)
    torch.manual_seed(0)
    base = build_supernet(space).to(device)
    steps = {}
    for name in ("plain", *variants):
        net = copy.deepcopy(base)
        if name != "plain":
            net.set_fused(True, depthwise=name)
        opt_w = torch.optim.SGD(net.weight_parameters(), lr=0.01, momentum=0.9)
        opt_t = torch.optim.Adam(net.arch_parameters(), lr=0.01)
        g = torch.Generator().manual_seed(0)
        steps[name] = (lambda n=net, a=opt_w, b=opt_t, g=g: search_step(n, x, y, cost, a, b, g))
    del base
    for step in steps.values():
        step()  # warm-up: allocations, optimizer state, cuDNN's algorithm choice
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name] += _timed(step, device, 1, warmup=False)
    best = {name: min(t) for name, t in times.items()}
    out = {f"{name}_s": best[name] for name in steps}
    out.update({f"{name}_median_s": statistics.median(t) for name, t in times.items()})
    out.update({f"ratio_{name}": best[name] / best["plain"] for name in variants})
    out.update({f"median_ratio_{name}": out[f"{name}_median_s"] / out["plain_median_s"] for name in variants})
    return out


def saved_bytes(space: str, size: int, device: torch.device) -> int:
    """Bytes of the tensors autograd saves for one image's search step (storages counted once)."""
    with torch.device(device):
        net = build_supernet(space)
    params = {p.untyped_storage()._cdata for p in net.parameters()}
    storages: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s._cdata not in params:
            storages[s._cdata] = s.nbytes()
        return t
    x = torch.randn(1, 3, size, size, device=device)
    y = torch.randint(0, 19, (1, size, size), device=device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(net(x, 3.0, torch.Generator().manual_seed(0)), y)
    del loss
    return sum(storages.values())


def memory_cpu(space: str, size: int, budget_gib: float) -> dict:
    """(c) on the meta device: saved activations + weights, grads, SGD momentum, Adam on theta."""
    per_image = saved_bytes(space, size, torch.device("meta"))
    net = build_supernet(space)
    weights = sum(p.numel() for p in net.weight_parameters()) * 4
    static = 3 * weights + 4 * sum(p.numel() for p in net.arch_parameters()) * 4
    return {"per_image_gib": per_image / GIB, "static_gib": static / GIB,
            "max_batch": int((budget_gib * GIB - static) // per_image)}


def memory_cuda(space: str, size: int, budget_gib: float, device: torch.device) -> dict:
    """(c) on a GPU: the allocator's peak over a search step at batch 1 and 2 (AMP). cuDNN's
    autotuning is off here: it takes minutes per new shape for hundreds of candidate convolutions,
    and its trial workspaces would count in the peak."""
    torch.backends.cudnn.benchmark = False
    peaks = []
    for batch in (1, 2):
        torch.cuda.empty_cache()
        torch.manual_seed(0)
        net = build_supernet(space).to(device)
        opt_w = torch.optim.SGD(net.weight_parameters(), lr=0.01, momentum=0.9)
        opt_t = torch.optim.Adam(net.arch_parameters(), lr=0.01)
        cost = torch.ones(len(net.blocks), 13, device=device)
        x = torch.randn(batch, 3, size, size, device=device)
        y = torch.randint(0, 19, (batch, size, size), device=device)
        g = torch.Generator().manual_seed(0)
        search_step(net, x, y, cost, opt_w, opt_t, g)  # creates the optimizer state
        torch.cuda.reset_peak_memory_stats(device)
        search_step(net, x, y, cost, opt_w, opt_t, g)
        peaks.append(torch.cuda.max_memory_allocated(device))
        del net, opt_w, opt_t, x, y
    per_image = peaks[1] - peaks[0]
    static = peaks[0] - per_image
    return {"per_image_gib": per_image / GIB, "static_gib": static / GIB, "peak_batch1_gib": peaks[0] / GIB,
            "max_batch": int((budget_gib * GIB - static) // per_image)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--spaces", default="small", help="comma-separated spaces for (a) and (b)")
    p.add_argument("--memory-spaces", default="small,large,xlarge")
    p.add_argument("--size", type=int, default=256, help="square input side for (a) and (b)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--memory-size", type=int, default=768)
    p.add_argument("--budget-gib", type=float, default=24.0)
    p.add_argument("--figures", default="mixing,pruning,memory,fused",
                   help="comma-separated: mixing (a), pruning (b), memory (c), fused (d)")
    p.add_argument("--depthwise", default=",".join(DEPTHWISE_VARIANTS),
                   help="(d): the fused depthwise variants to time against the plain supernet")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    figures = set(a.figures.split(","))
    if figures - {"mixing", "pruning", "memory", "fused"} or set(a.depthwise.split(",")) - set(DEPTHWISE_VARIANTS):
        p.error(f"--figures: mixing, pruning, memory, fused; --depthwise: {', '.join(DEPTHWISE_VARIANTS)}")
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "threads": torch.get_num_threads(), "size": a.size, "batch": a.batch, "spaces": {}}
    for space in filter(None, a.spaces.split(",")):  # --spaces "": memory only
        torch.manual_seed(0)
        x = torch.randn(a.batch, 3, a.size, a.size, device=device)
        y = torch.randint(0, 19, (a.batch, a.size, a.size), device=device)
        r = {}
        if "mixing" in figures:
            net = build_supernet(space).to(device)
            r["mixing"] = mixing_overhead(net, x, a.repeats)
            del net
            print(f"(a) {space}: superblocks {r['mixing']['superblocks_s'] * 1e3:.1f} ms / 13 candidates alone "
                  f"{r['mixing']['candidates_s'] * 1e3:.1f} ms = {r['mixing']['ratio']:.3f}", flush=True)
        if "pruning" in figures:
            r["pruning"] = pruning_speedup(space, x, y, a.repeats)
            print(f"(b) {space}: step pruned to one live candidate per block {r['pruning']['one_live_s'] * 1e3:.1f} "
                  f"ms / unpruned {r['pruning']['unpruned_s'] * 1e3:.1f} ms = {r['pruning']['ratio']:.3f}", flush=True)
        if "fused" in figures:
            f = r["fused"] = fused_speedup(space, x, y, a.repeats, tuple(a.depthwise.split(",")))
            for v in a.depthwise.split(","):
                print(f"(d) {space}: fused ({v}) step {f[v + '_s'] * 1e3:.1f} ms / plain {f['plain_s'] * 1e3:.1f} ms = "
                      f"{f['ratio_' + v]:.3f} (medians {f[v + '_median_s'] * 1e3:.1f} / "
                      f"{f['plain_median_s'] * 1e3:.1f} ms = {f['median_ratio_' + v]:.3f})", flush=True)
        results["spaces"][space] = r
    results["memory"] = {}
    for space in filter(None, a.memory_spaces.split(",") if "memory" in figures else []):
        m = memory_cuda(space, a.memory_size, a.budget_gib, device) if device.type == "cuda" \
            else memory_cpu(space, a.memory_size, a.budget_gib)
        results["memory"][space] = m
        print(f"(c) {space} at {a.memory_size}x{a.memory_size}: {m['per_image_gib']:.2f} GiB per image + "
              f"{m['static_gib']:.2f} GiB fixed -> largest batch in {a.budget_gib:g} GiB: {m['max_batch']}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
