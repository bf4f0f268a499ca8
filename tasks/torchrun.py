"""The one torchrun launch of the search and the retraining stages: `nproc` DDP processes of a worker
module, under this command's reaper like every other helper (tasks/processes.py).

torchrun runs in its own session, so a terminal's Ctrl-C reaches only the command, which then stops it
(SIGTERM: torchrun ends its workers, each in a session of its own, and exits). A kill -9 of the command
leaves that to the reaper; the workers also die with torchrun itself (`worker_dies_with_launcher`)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

from tasks import processes

GRACE_S = 20.0  # torchrun gives its workers SIGTERM, then waits for them before it exits
LAUNCHER_PID = "SQUEEZENAS_TORCHRUN_PID"  # torchrun's pid, in its workers' environment


def torchrun_command(module: str, args: list[str], nproc: int) -> list[str]:
    """torchrun through `exec` in a shell that first exports its own pid, which torchrun keeps: the
    workers, which inherit the environment, can tell whether their parent is still torchrun."""
    return ["sh", "-c", f'{LAUNCHER_PID}=$$ exec "$@"', "torchrun", sys.executable, "-m", "torch.distributed.run",
            "--standalone", f"--nproc_per_node={nproc}", "-m", module, *args]


def run_torchrun(module: str, args: list[str], nproc: int, label: str) -> int:
    """Run `python -m module args` in `nproc` torchrun processes; return torchrun's exit status.
    An interrupt (Ctrl-C, SIGTERM) of this command stops torchrun and its workers before it goes on;
    torchrun's own report of that stop (a traceback of its SignalException) is not shown, as the
    command says in one line what happened. Its other output and the workers' pass through."""
    cmd = torchrun_command(module, args, nproc)
    print(f"[{label}] launching {nproc} DDP processes: python -m torch.distributed.run --nproc_per_node={nproc} "
          f"-m {module} ...", flush=True)
    proc = processes.spawn(cmd, first=signal.SIGTERM, stderr=subprocess.PIPE)
    stopping = threading.Event()

    def relay() -> None:
        for line in iter(proc.stderr.readline, b""):
            if not stopping.is_set():
                sys.stderr.write(line.decode(errors="replace"))
                sys.stderr.flush()
    relayer = threading.Thread(target=relay, name="torchrun-stderr", daemon=True)
    relayer.start()
    try:
        return proc.wait()
    except BaseException:
        stopping.set()
        raise
    finally:
        processes.stop(proc, grace_s=GRACE_S)
        relayer.join(timeout=5)
        proc.stderr.close()


def worker_dies_with_launcher() -> None:
    """In a torchrun worker: die when torchrun dies, also when it was killed outright (its SIGTERM
    ends the workers itself), and at once if it is gone already (the worker was still starting)."""
    launcher = os.environ.get(LAUNCHER_PID)
    if launcher is not None:
        processes.die_with_parent(expected_parent=int(launcher))
