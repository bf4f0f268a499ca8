"""The one torchrun launch of the search and the retraining stages: `nproc` DDP processes of a worker
module, under this command's reaper like every other helper (tasks/processes.py).

torchrun runs in its own session, so a terminal's Ctrl-C reaches only the command, which then stops it
(SIGTERM: torchrun ends its workers, each in a session of its own, and exits). A kill -9 of the command
leaves that to the reaper; the workers also die with torchrun itself (`worker_dies_with_launcher`).

Across machines (nnodes > 1) every node runs the same command: torchrun joins the others at a c10d
rendezvous (`--rdzv-endpoint`, the store on one node) instead of `--standalone`, and restarts the workers
(`--max-restarts`) after a failure or when a killed node comes back. Which node's workers hold rank 0 is
settled by the rendezvous, so each worker reports to its own node's command through a private folder
(`NODE_REPORT`): rank 0's after it wrote the outputs, any worker's error (one line naming the path or field)."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from nas_core.io import temp_dir
from tasks import processes

GRACE_S = 20.0  # torchrun gives its workers SIGTERM, then waits for them before it exits
LAUNCHER_PID = "SQUEEZENAS_TORCHRUN_PID"  # torchrun's pid, in its workers' environment
NODE_REPORT = "SQUEEZENAS_NODE_REPORT"  # a folder of this node's command, in its workers' environment
MAIN, ERROR = "main", "error-rank"  # the report files: rank 0 finished here; a worker's error
SHARED_STORE_OFF = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"


@dataclass(frozen=True)
class Nodes:
    """How many machines a torchrun job spans and where they meet (params: search/train nnodes,
    rdzv_endpoint, max_restarts); `job` names the rendezvous (--rdzv-id), the same on every node."""

    nnodes: int = 1
    rdzv_endpoint: str | None = None
    max_restarts: int = 0
    job: str = "squeezenas"

    @classmethod
    def of(cls, section, job: str) -> Nodes:
        """From a params section with nnodes, rdzv_endpoint and max_restarts (search or train of nas_core.config)."""
        return cls(section.nnodes, section.rdzv_endpoint, section.max_restarts,
                   re.sub(r"[^A-Za-z0-9_.-]", "_", job))


def launch_options(nproc: int, nodes: Nodes) -> list[str]:
    """torchrun's options: one machine standalone, or c10d rendezvous across `nodes.nnodes`."""
    if nodes.nnodes == 1:
        options = ["--standalone", f"--nproc_per_node={nproc}"]
    else:
        if not nodes.rdzv_endpoint:
            raise ValueError(f"rdzv_endpoint: nnodes {nodes.nnodes} needs a c10d rendezvous host:port")
        options = [f"--nnodes={nodes.nnodes}", f"--nproc_per_node={nproc}", "--rdzv-backend=c10d",
                   f"--rdzv-endpoint={nodes.rdzv_endpoint}", f"--rdzv-id={nodes.job}"]
    if nodes.max_restarts:
        options.append(f"--max-restarts={nodes.max_restarts}")
    return options


@dataclass(frozen=True)
class NodeOutcome:
    """What torchrun on this node ended with: its status, and whether rank 0 ran (and finished) here."""

    code: int
    main: bool


def torchrun_command(module: str, args: list[str], nproc: int, nodes: Nodes = Nodes()) -> list[str]:
    """torchrun through `exec` in a shell that first exports its own pid, which torchrun keeps: the
    workers, which inherit the environment, can tell whether their parent is still torchrun."""
    return ["sh", "-c", f'{LAUNCHER_PID}=$$ exec "$@"', "torchrun", sys.executable, "-m", "torch.distributed.run",
            *launch_options(nproc, nodes), "-m", module, *args]


def run_torchrun(module: str, args: list[str], nproc: int, label: str, nodes: Nodes = Nodes()) -> int:
    """Run `python -m module args` in `nproc` torchrun processes (on each of `nodes`); return torchrun's exit
    status (`run_torchrun_node` also says whether rank 0 ran here)."""
    return run_torchrun_node(module, args, nproc, label, nodes).code


def run_torchrun_node(module: str, args: list[str], nproc: int, label: str, nodes: Nodes = Nodes()) -> NodeOutcome:
    """Run `python -m module args` in `nproc` torchrun processes on this node of `nodes`.
    An interrupt (Ctrl-C, SIGTERM) of this command stops torchrun and its workers before it goes on;
    torchrun's own report of that stop (a traceback of its SignalException) is not shown, as the
    command says in one line what happened. Its other output and the workers' pass through.
    A worker's error (one line naming the path or field, `reporting_errors`) fails this command with that line.
    """
    report = temp_dir(tempfile.gettempdir(), "squeezenas-node-", registry=processes.reaper())  # also after a kill -9
    try:
        code = _run(module, args, nproc, label, nodes, str(report))
        errors = [(report / name).read_text().strip() for name in sorted(os.listdir(report)) if name.startswith(ERROR)]
        if code != 0 and errors:
            raise ValueError(errors[0])
        return NodeOutcome(code, (report / MAIN).is_file())
    finally:
        shutil.rmtree(report, ignore_errors=True)
        processes.reaper().forget(report)


def _run(module: str, args: list[str], nproc: int, label: str, nodes: Nodes, report: str) -> int:
    cmd = torchrun_command(module, args, nproc, nodes)
    where = "" if nodes.nnodes == 1 else (f" on this node of {nodes.nnodes} (c10d rendezvous at "
                                          f"{nodes.rdzv_endpoint}, job {nodes.job})")
    print(f"[{label}] launching {nproc} DDP processes{where}: python -m torch.distributed.run "
          f"{' '.join(launch_options(nproc, nodes))} -m {module} ...", flush=True)
    env = {**os.environ, NODE_REPORT: report}
    if nodes.nnodes > 1:
        # each rendezvous round publishes a fresh MASTER_ADDR/PORT: with torchrun's shared TCP store (its default),
        # after a node was lost and came back the surviving rank-0 agent kept the old round's store and never
        # published it in the new round, so the returning node's worker waited forever (torch 2.13; tested)
        env[SHARED_STORE_OFF] = "1"
    proc = processes.spawn(cmd, first=signal.SIGTERM, stderr=subprocess.PIPE, env=env)
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


def _report(name: str, text: str = "") -> None:
    folder = os.environ.get(NODE_REPORT)
    if folder and Path(folder).is_dir():
        (Path(folder) / name).write_text(text)


def report_main() -> None:
    """In a torchrun worker: rank 0 finished (its outputs are written) on this node."""
    _report(MAIN)


@contextmanager
def reporting_errors() -> Iterator[None]:
    """In a torchrun worker: a user's error (ValueError, OSError: its message names the path or field) is
    passed to this node's command, which then fails with that one line."""
    try:
        yield
    except (ValueError, OSError) as e:
        text = " ".join((str(e) or type(e).__name__).split("\n"))
        _report(f"{ERROR}{os.environ.get('RANK', '0')}", text)
        raise
