"""Multi-process search: DistributedDataParallel over 2 CPU processes (gloo on 127.0.0.1)."""
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nas_core.config import SearchParams
from nas_core.cost.macs import build_cost_table, cost_matrix
from nas_core.search.data import search_loader
from nas_core.search.loop import run_search, search_config
from nas_core.search.supernet import build_supernet
from tests.test_supernet_fixtures import TINY, TINY_CLASSES, TinySegmentation, register_tiny


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str, fused: bool) -> None:
    torch.set_num_threads(1)
    register_tiny()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # DDP broadcasts rank 0's weights anyway; theta starts uniform on both
        net = build_supernet(TINY, TINY_CLASSES, fused=fused)
        cost, fixed = cost_matrix(build_cost_table(TINY, (32, 64), TINY_CLASSES))
        loader = search_loader(TinySegmentation(16), 2, seed=0, rank=rank, world_size=world)
        seen = [key for batch in _keys(loader) for key in batch]
        config = search_config(SearchParams(epochs=2, alpha=2.0, theta_lr=0.2, prune_threshold=0.07, log_every=100))
        result = run_search(net, loader, cost, config, f"{out_dir}/ckpt", fixed_cost=fixed, log=lambda s: None)
        torch.save({"theta": net.arch_logits().detach(), "live": net.live_mask(), "seen": seen,
                    "pruned": len(result.pruning_log), "weights": [p.detach() for p in net.weight_parameters()]},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _keys(loader):
    loader.batch_sampler.set_epoch(0)
    return list(loader.batch_sampler)


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
def test_two_process_search_ends_with_identical_theta_on_both_ranks(tmp_path, fused):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), fused), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert not set(r0["seen"]) & set(r1["seen"])  # each rank reads its own share of the images
    assert len(r0["seen"]) == len(r1["seen"]) == 8
    assert torch.isfinite(r0["theta"][r0["live"]]).all() and (r0["theta"][r0["live"]] != 0).any()
    assert torch.equal(r0["theta"], r1["theta"])
    assert torch.equal(r0["live"], r1["live"]) and r0["pruned"] == r1["pruned"] > 0  # DDP re-wrapped after pruning
    assert all(torch.equal(a, b) for a, b in zip(r0["weights"], r1["weights"]))
