"""No process or temporary folder outlives the command that made it (issue 12).

A helper process (the Prefect server, the stage fork server, `dvc repro`) runs in its own session,
so a terminal's Ctrl-C reaches only the command, which then stops its helpers in order: the stage
reports its end to the still-running Prefect server before that server stops. A kill -9 of the
command leaves no time for that, so one small reaper process per command holds the read end of a
pipe: when the command is gone, however it went, the pipe reads EOF and the reaper ends the
helpers' process groups (newest first, SIGTERM, then SIGKILL after a grace period) and removes the
temporary folders the command had registered.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn

GRACE_S = 15.0  # a stage ending on SIGTERM marks its MLflow and Prefect runs; that takes seconds


class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised in the main thread as SIGINT raises KeyboardInterrupt, so that a
    terminated command ends as an interrupted one does (runs marked, helpers stopped, exit 128+N)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signal = signum


_stopping: int | None = None  # the signal this process is stopping on, once one came
RESUME_HINT = "the work done so far is kept: rerun the same command (or dvc repro) to resume"


def raise_on_termination(command: str) -> None:
    """SIGTERM and SIGHUP raise Terminated in the main thread as SIGINT raises KeyboardInterrupt. A second
    signal while the first is being handled (runs marked, helpers stopped) ends the process at once with
    one line instead of a traceback from the middle of that clean-up: the reaper still ends the helpers
    and removes the temporary folders, and the next command marks the runs left RUNNING."""

    def handler(signum, frame):
        global _stopping
        if _stopping is not None:
            name = signal.Signals(signum).name
            line = f"squeezenas {command}: interrupted again ({name}) while stopping: stopped now; {RESUME_HINT}"
            os.write(2, f"\n{line}\n".encode())
            os._exit(128 + signum)
        _stopping = signum
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signum != signal.SIGINT or signal.getsignal(signum) is not signal.SIG_IGN:  # a background job's stays
            signal.signal(signum, handler)


def die_with_parent(expected_parent: int, signum: int = signal.SIGKILL) -> None:
    """Have the kernel send this process `signum` when its parent dies (Linux PR_SET_PDEATHSIG; elsewhere
    nothing): for a worker whose parent may be killed outright before it can end the worker. If the
    parent is not `expected_parent`, it is gone already: `signum` now."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(1, int(signum), 0, 0, 0) == 0 and os.getppid() != expected_parent:
        os.kill(os.getpid(), signum)


def signal_of(exc: BaseException) -> int | None:
    """The signal behind `exc` (KeyboardInterrupt, Terminated or Prefect's TerminationSignal), or None."""
    if isinstance(exc, KeyboardInterrupt):
        return signal.SIGINT
    signum = getattr(exc, "signal", None)
    return int(signum) if not isinstance(exc, Exception) and isinstance(signum, int) else None


def exit_now(code: int, last_words: str = "") -> NoReturn:
    """Exit with `code` once the atexit hooks ran (Prefect and MLflow flush there), printing
    `last_words` after them, so they are the last line. A plain exit would first join the task
    runner's worker threads, which finish their task (minutes of data generation) before the
    process may end; whatever they left is the reaper's to remove."""
    import atexit

    try:
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        if last_words:
            print(last_words, file=sys.stderr)
        sys.stderr.flush()
        os._exit(code)


def _answers(send, target: int) -> bool:
    """Whether signal 0 through `send` (os.kill or os.killpg) finds `target`."""
    try:
        send(target, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # one we cannot signal still exists
        return True


def group_alive(pgid: int) -> bool:
    return _answers(os.killpg, pgid)


def pid_alive(pid: int) -> bool:
    return _answers(os.kill, pid)


def end_group(pgid: int, grace_s: float = GRACE_S, first: int | None = signal.SIGTERM) -> None:
    """Signal every process of group `pgid` with `first`; SIGKILL whatever is left after `grace_s`.
    (A member that is our own unreaped child counts as alive: `stop` waits for its helper first.)"""
    try:
        os.killpg(pgid, first or 0)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Reaper:
    """This process's reaper: register process groups and folders; it ends/removes whatever is
    still registered once this process is gone."""

    def __init__(self) -> None:
        read, self._write = os.pipe()  # non-inheritable: only the reaper holds the read end
        self.proc = subprocess.Popen([sys.executable, "-m", "tasks.processes"], stdin=read, start_new_session=True,
                                     # not the caller's streams: a pipe it reads would stay open until the reaper ends
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     cwd=Path(__file__).resolve().parents[1])
        os.close(read)

    def _say(self, line: str) -> None:
        os.write(self._write, f"{line}\n".encode())

    def watch(self, pgid: int, first: int = signal.SIGTERM) -> None:
        self._say(f"+group {pgid} {int(first)}")

    def release(self, pgid: int) -> None:
        self._say(f"-group {pgid}")

    def remove_at_exit(self, folder: Path) -> None:
        """A temporary folder: removed if it is still there once this process is gone."""
        self._say(f"+folder {Path(folder).resolve()}")

    def forget(self, folder: Path) -> None:
        self._say(f"-folder {Path(folder).resolve()}")


_reaper: Reaper | None = None
_reaper_pid = 0
_reaper_lock = threading.Lock()  # the data stage's task threads ask for it at once


def reaper() -> Reaper:
    """The reaper of this process (started on first use; a forked child starts its own)."""
    global _reaper, _reaper_pid
    with _reaper_lock:
        if _reaper is None or _reaper_pid != os.getpid():
            _reaper, _reaper_pid = Reaper(), os.getpid()
        return _reaper


def spawn(cmd: list[str], first: int = signal.SIGTERM, **popen_kwargs) -> subprocess.Popen:
    """Start a helper in its own session (its own process group), ended with this process by
    signal `first` (then SIGKILL)."""
    proc = subprocess.Popen(cmd, start_new_session=True, **popen_kwargs)
    reaper().watch(proc.pid, first)
    return proc


def stop(proc: subprocess.Popen, grace_s: float = 10.0, first: int = signal.SIGTERM) -> None:
    """End a helper from `spawn` and everything left in its group; wait for it."""
    deadline = time.monotonic() + grace_s
    try:
        os.killpg(proc.pid, first)
    except ProcessLookupError:  # it and its group are gone already
        pass
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        pass
    end_group(proc.pid, max(0.0, deadline - time.monotonic()), None)  # what it left behind, if anything
    proc.wait()
    reaper().release(proc.pid)


def _reap(lines) -> None:
    """The reaper's loop: track registrations until EOF (the owner is gone), then clean up."""
    groups: dict[int, int] = {}  # process group -> the signal that ends it first
    folders: dict[str, None] = {}
    for line in lines:
        sign, kind, value = line[0], *line[1:].rstrip("\n").split(" ", 1)
        if kind == "group":
            pgid, _, first = value.partition(" ")
            registry, key, item = groups, int(pgid), int(first or signal.SIGTERM)
        else:
            registry, key, item = folders, value, None
        if sign == "+":
            registry[key] = item
        else:
            registry.pop(key, None)
    for pgid in reversed(groups):  # newest first: a stage ends before the server it reports to
        end_group(pgid, first=groups[pgid])
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the owner's Ctrl-C is the owner's to handle
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closed terminal: still clean up
    _reap(sys.stdin)
