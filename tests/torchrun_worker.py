"""A torchrun worker for tests/test_torchrun.py: all-reduce across the ranks (gloo), write the result."""
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from tasks.torchrun import LAUNCHER_PID, worker_dies_with_launcher

if __name__ == "__main__":
    worker_dies_with_launcher()
    out, fail = Path(sys.argv[1]), sys.argv[2:] == ["--fail"]
    dist.init_process_group("gloo")
    total = torch.tensor([dist.get_rank() + 1.0])
    dist.all_reduce(total)
    (out / f"rank{dist.get_rank()}.txt").write_text(f"{total.item()} {os.environ[LAUNCHER_PID]} {os.getppid()}")
    dist.destroy_process_group()
    if fail:
        print("worker: planned failure", file=sys.stderr)
        sys.exit(3)
