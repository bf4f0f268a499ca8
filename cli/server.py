"""The Prefect server a command talks to: the configured one (PREFECT_API_URL), or one started for
the command. Started here rather than by Prefect's ephemeral mode because Prefect's runs in the
command's process group: a terminal's Ctrl-C killed it first, so the stage then hung reporting
its end to a dead server, and a kill -9 or SIGTERM of the command left it running. Ours runs in its
own session, is stopped after the stage has reported, and dies with the command (tasks/processes)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks import processes
from tasks.telemetry import TELEMETRY_OFF


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_server_command(home: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """`prefect server start` with its own database and UI under `home` (`squeezenas run`)."""
    # no block types registered: the pipeline uses none, and it saves ~0.5 s of a fresh server's start
    env = dict(os.environ, **TELEMETRY_OFF, PREFECT_HOME=str(home.resolve()),
               PREFECT_API_BLOCKS_REGISTER_ON_START="false")
    prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
    return [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env


def _stage_server_command(port: int) -> tuple[list[str], dict[str, str]]:
    """What Prefect's ephemeral server runs (its configured database, no UI), for one stage command."""
    import prefect
    from prefect.settings import get_current_settings

    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
           "PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
           **get_current_settings().to_environment_variables(exclude_unset=True)}
    return [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
            "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "error", "--lifespan", "on"], env


@contextmanager
def prefect_server(home: Path | None = None) -> Iterator[tuple[str, Callable[[], float]]]:
    """Yield (api_url, ready): the configured server, or one started for this command (with `home`:
    the run's own server and database there; without: as Prefect's ephemeral server). The URL is
    known at once; `ready()` waits until the server answers and returns its start-up seconds, so the
    caller can start other work meanwhile."""
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"], lambda: 0.0
        return
    port, t0 = _free_port(), time.perf_counter()
    if home is None:
        cmd, env = _stage_server_command(port)
    else:
        home.mkdir(parents=True, exist_ok=True)
        cmd, env = _run_server_command(home, port)
    # a stage's server log matters only if it fails to start (its shutdown is noisy): a temporary file
    with tempfile.TemporaryFile("w+") if home is None else (home / "server.log").open("w+") as log:
        proc = processes.spawn(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        url, started = f"http://127.0.0.1:{port}/api", []

        def ready() -> float:
            while not started:
                try:
                    urllib.request.urlopen(f"{url}/health", timeout=1).read()
                    started.append(time.perf_counter() - t0)
                except OSError:
                    if proc.poll() is not None or time.perf_counter() - t0 > 120:
                        log.seek(0)
                        tail = " | ".join(log.read().strip().splitlines()[-3:])
                        raise RuntimeError(f"the Prefect server did not start: {tail or 'no output'}") from None
                    time.sleep(0.1)
            return started[0]
        try:
            yield url, ready
        finally:
            processes.stop(proc)


@contextmanager
def stage_api() -> Iterator[str]:
    """The Prefect API for one stage command's flow: PREFECT_API_URL's, or a server of its own."""
    from prefect import tags
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with prefect_server() as (url, ready):
        ready()
        settings = {PREFECT_API_URL: url}
        in_run = os.environ.get(ORPHANS_CHECKED_ENV) == url
        if in_run:
            # A stage of `squeezenas run` against the run's own server: a flow run's heartbeats only feed a
            # server-side crash automation, which that server has not got (the run marks its dead commands'
            # runs Crashed itself), and ending the heartbeat thread holds every flow up to 1 s at its end.
            settings[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
        try:
            with temporary_settings(settings):
                if not in_run:  # `squeezenas run` checks once for all its stages
                    check_orphaned_flow_runs()
                with tags(f"{HOST_TAG}{socket.gethostname()}", f"{PID_TAG}{os.getpid()}"):  # for the next command
                    yield url
        finally:
            _drain_to_server()


HOST_TAG, PID_TAG = "squeezenas.host:", "squeezenas.pid:"
ORPHANS_CHECKED_ENV = "SQUEEZENAS_ORPHANS_CHECKED"  # the API URL whose dead commands' runs are marked already


def check_orphaned_flow_runs() -> None:
    """`end_orphaned_flow_runs`, never stopping the command that does this bookkeeping for earlier ones."""
    try:
        end_orphaned_flow_runs()
    except Exception as e:
        print(f"[prefect] could not check for flow runs of dead commands: {e}", file=sys.stderr)


def end_orphaned_flow_runs() -> list[str]:
    """Mark Crashed the Running flow runs of this host whose command's process is gone. A kill -9 (or a
    lost machine) gives a command no chance to report its end, so the next command on the machine
    does, as tasks/tracking.end_stale_runs does for MLflow runs. Returns the flow run ids."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.states import Crashed

    host, ended = socket.gethostname(), []
    running = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])),
                            tags=FlowRunFilterTags(all_=[f"{HOST_TAG}{host}"]))
    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs(flow_run_filter=running, sort=FlowRunSort.START_TIME_ASC, limit=200):
            pids = [t.removeprefix(PID_TAG) for t in run.tags if t.startswith(PID_TAG)]
            if not pids or not pids[0].isdigit() or processes.pid_alive(int(pids[0])):
                continue
            client.set_flow_run_state(run.id, Crashed(message=f"its command's process {pids[0]} on {host} is gone "
                                                      "(killed outright); marked by the next command"), force=True)
            ended.append(str(run.id))
    return ended


def _drain_to_server(timeout_s: float = 10.0) -> None:
    """Send the queued logs and events while the server still runs (it stops before the exit hooks)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=timeout_s)
