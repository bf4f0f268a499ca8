"""Data-parallel training under torchrun (the paper's search and retraining ran on several GPUs): the
process group, this process's rank and device, and the one DDP (+ SyncBatchNorm) wrapping that the search
and the retraining share."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # the GPU of this process on its machine
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join torchrun's process group when WORLD_SIZE > 1 (nccl on GPU, gloo on CPU); else one process."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device: expected auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was requested but no GPU is visible")
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return DistInfo(device=torch.device("cuda" if cuda else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank,
                    torch.device(f"cuda:{local_rank}" if cuda else "cpu"))


def current_distributed(device: torch.device) -> DistInfo:
    """This process's place in the process group joined already (by `init_distributed` or by hand, as
    mp.spawn tests do), with its model on `device`; one process when there is no group."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo(device=device)
    gpu = device.index if device.type == "cuda" and device.index is not None else 0
    return DistInfo(dist.get_rank(), dist.get_world_size(), gpu, device)


def wrap_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    """`model` as this process trains it: in DistributedDataParallel when there are several processes
    (gradients all-reduced, rank 0's weights broadcast now), with SyncBatchNorm on GPU; itself otherwise.
    Wrap again after modules were removed (pruning): DDP keeps the parameter list it was built with."""
    if info.world_size == 1:
        return model
    cuda = info.device.type == "cuda"
    # SyncBatchNorm needs GPU modules; on CPU (gloo) each process keeps its own batch statistics
    if cuda and not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules()):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[info.local_rank] if cuda else None)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """`t` summed over the processes, in place."""
    if info.world_size > 1:
        dist.all_reduce(t)
    return t


def all_reduce_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """`t` averaged over the processes, in place."""
    if info.world_size > 1:
        dist.all_reduce(t)
        t /= info.world_size
    return t


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def gather_objects(obj, info: DistInfo) -> list:
    """`obj` of every process, in rank order (picklable objects; [obj] with one process)."""
    if info.world_size == 1:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def check_shared_storage(info: DistInfo, readable: dict[str, str], writable: dict[str, str]) -> None:
    """Across machines every process must see the same files: the inputs it reads (`readable`: params
    field -> path) and the folders rank 0 writes and every rank resumes from (`writable`). Rank 0 writes
    a token file into each of `writable`; a process that cannot see an input, or finds no token (its node
    has a folder of its own there, not the shared one), makes every process fail at once with an error
    naming the field, the path and the processes' hosts."""
    if info.world_size == 1:
        return
    import secrets
    import socket

    token = [secrets.token_hex(8) if info.is_main else None]
    dist.broadcast_object_list(token)
    probes = {}
    if info.is_main:
        for field, folder in writable.items():
            probe = Path(folder) / f".shared-{token[0]}"
            probe.parent.mkdir(parents=True, exist_ok=True)
            probe.write_text(token[0])
            probes[field] = probe
    barrier(info)
    missing = [f"{field}: {path}: no such file or folder" for field, path in readable.items()
               if not Path(path).exists()]
    for field, folder in writable.items():
        probe = Path(folder) / f".shared-{token[0]}"
        try:
            seen = probe.read_text() == token[0]
        except OSError:
            seen = False
        if not seen:
            missing.append(f"{field}: {folder}: not the folder rank 0 writes (its file {probe.name} is not there)")
    reports = gather_objects((info.rank, socket.gethostname(), missing), info)
    barrier(info)
    for probe in probes.values():
        probe.unlink(missing_ok=True)
    blind = [(rank, host, problems) for rank, host, problems in reports if problems]
    if blind:
        rank, host, problems = blind[0]
        ranks = ", ".join(f"{r} ({h})" for r, h, _ in blind)
        raise FileNotFoundError(f"{problems[0]}: seen from rank {rank} on {host}; every node must see the data and "
                                f"output folders on shared storage (ranks that cannot: {ranks})")
