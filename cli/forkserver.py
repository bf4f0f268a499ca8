"""A warm start for the stage commands of one `squeezenas run` (orchestration cost, issue 8).

`dvc repro` starts every stage as a new `squeezenas ...` process, and each one used to spend
~5 s importing torch, Prefect and MLflow before doing any work: 11 stages, ~1 minute of a 12-minute
run. `squeezenas run` starts this server once with the stages' environment; it imports those
modules and waits. A stage command that finds `SQUEEZENAS_FORKSERVER` in its environment hands its
argv, working directory, environment and stdin/stdout/stderr (passed as file descriptors) to the
server, which forks a child that runs the command exactly as the process would have (same cwd,
env, streams, exit status) while the client waits, forwarding signals. The client dies -> the child
is terminated, as a killed stage process would be. Without the variable, or when the server is
unreachable or its import-time environment differs (OMP_*, PREFECT_*, ... are read when a library
loads), the command runs in its own process as before: the server only ever saves time.

Fork safety: the server runs no threads and no parallel torch/OpenMP work before it forks (it
checks), and no child shares a socket, database connection or CUDA context with it.
"""
from __future__ import annotations

import atexit
import importlib
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from pathlib import Path

from nas_core.io import atomic_write_json

ENV = "SQUEEZENAS_FORKSERVER"
# the server's own settings (never passed on to a stage): {"uris": [MLflow tracking URIs], "gate": a file}
WARM_ENV = "SQUEEZENAS_FORKSERVER_MLFLOW"
# variables read when a library loads (not when it is used): a child cannot honour a different value
LOAD_TIME_PREFIXES = ("PREFECT_", "OMP_", "MKL_", "KMP_", "OPENBLAS_", "CUDA_", "LD_", "PYTHON", "TORCH", "MLFLOW_")


def _load_time_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(LOAD_TIME_PREFIXES)}


def _send(sock: socket.socket, message: dict) -> None:
    data = json.dumps(message).encode()
    sock.sendall(struct.pack("!I", len(data)) + data)


def _recv(sock: socket.socket) -> dict | None:
    header = _recv_exact(sock, 4)
    if header is None:
        return None
    data = _recv_exact(sock, struct.unpack("!I", header)[0])
    return None if data is None else json.loads(data)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    chunks = b""
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return chunks


# ---------------------------------------------------------------- client (the stage command)

def run_via_server(argv: list[str]) -> int | None:
    """Run `squeezenas argv` in a child of the server; None: no usable server, run in-process."""
    path = os.environ.get(ENV)
    if not path:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        socket.send_fds(sock, [b"\0"], [0, 1, 2])
        _send(sock, {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)})
        reply = _recv(sock)
    except OSError:
        sock.close()
        return None
    if reply is None or "pid" not in reply:  # refused (environment differs) or the server went away
        sock.close()
        if reply is not None:
            print(f"squeezenas: the run's fork server refused this command ({reply.get('refused')}); "
                  "it starts cold", file=sys.stderr)
        return None
    pid = reply["pid"]

    def forward(signum, frame):  # Ctrl-C or a kill of the stage reaches the child that does its work
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    reply = _recv(sock)
    sock.close()
    if reply is None:
        print(f"squeezenas: the stage process {pid} ended without an exit status (the run's fork server stopped?)",
              file=sys.stderr)
        return 1
    code = reply["exit"]
    return 128 - code if code < 0 else code  # killed by signal N -> 128 + N, as a shell reports it


# ---------------------------------------------------------------- server

def preload(modules: tuple[str, ...]) -> list[str]:
    """Import what the stages import; return the modules that failed (optional extras)."""
    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # an optional dependency: the stage that needs it imports (and fails) itself
            failed.append(name)
    return failed


def warm_mlflow(uris: list[str], gate: str | None = None, timeout_s: float = 120.0) -> list[str]:
    """Open the MLflow tracking and registry stores of `uris` once, so that no stage pays for it: a
    process's first store checks the database schema against MLflow's ~100 migration scripts (~1.3 s of
    every stage). MLflow caches the stores and their SQLAlchemy engines per URI; the engines' pooled
    connections are closed here, so every child opens its own. `gate`: a file the run writes once its
    parent run has created the database (two processes must not migrate one sqlite file at once).
    Returns the URIs that failed (their stages open them themselves)."""
    t0 = time.perf_counter()
    while gate and not Path(gate).exists():
        if time.perf_counter() - t0 > timeout_s:
            return list(uris)
        time.sleep(0.05)
    failed = []
    try:
        import mlflow
        from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingStore
    except ImportError:
        return list(uris)
    for uri in uris:
        try:
            mlflow.set_tracking_uri(uri)
            mlflow.MlflowClient()._get_registry_client()  # both stores, as a stage's client opens them
        except Exception:
            failed.append(uri)
    mlflow.set_tracking_uri(None)
    try:  # the installed packages' module map, which each model logging scans (~1.3 s) to check requirements
        from mlflow.utils import requirements_utils
        requirements_utils._init_packages_to_modules_map()
    except Exception:
        pass
    for engine in (*TrackingStore._engine_map.values(), *RegistryStore._engine_map.values()):
        engine.dispose()  # no connection is shared with a child
    return failed


def _entry(spec: str):
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def _child(conn: socket.socket, listener: socket.socket, fds: list[int], request: dict, entry: str) -> None:
    """In the forked child: become the stage process described by `request`, then exit."""
    main = _entry(entry)
    listener.close()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL if signum != signal.SIGINT else signal.default_int_handler)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ.pop(ENV, None)  # the child is the stage process: its own `squeezenas` calls start afresh
    sys.argv = ["squeezenas", *request["argv"]]

    def watch_client():  # the client went away (killed): end like a killed stage process
        try:
            conn.recv(1)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch_client, daemon=True).start()
    code = 1
    try:
        code = main(request["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            atexit._run_exitfuncs()  # Prefect/MLflow flush their queues at exit
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)


def serve(path: str, ready_file: str | None, entry: str, modules: tuple[str, ...]) -> None:
    """Serve requests at `path`: each is run as `entry(argv)` ("module:function", an int exit status) in a
    forked child of this process, which imported `modules` first."""
    # as started, before any import: torch._dynamo, for one, sets TORCHINDUCTOR_CACHE_DIR when it loads
    server_env = _load_time_env(dict(os.environ))
    failed = preload(modules)
    _entry(entry)
    warm = json.loads(os.environ.pop(WARM_ENV, "") or "{}")
    if warm.get("uris"):
        failed += [f"mlflow:{uri}" for uri in warm_mlflow(warm["uris"], warm.get("gate"))]
    if threading.active_count() > 1:  # a forked child would inherit a half-copied thread
        raise RuntimeError(f"fork server: preloading started threads ({threading.enumerate()}); not serving")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    children: dict[int, socket.socket] = {}
    counts = {"served": 0, "refused": 0, "commands_s": 0.0}  # commands_s: summed wall time of the children
    started: dict[int, float] = {}
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    if ready_file:
        atomic_write_json(ready_file, {"pid": os.getpid(), "failed": failed})
    while not stop:
        try:
            readable, _, _ = select.select([listener], [], [], 0.2)
        except InterruptedError:
            readable = []
        while children:  # report every finished child's exit status to its client
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = children.pop(pid)
            counts["commands_s"] += time.perf_counter() - started.pop(pid)
            try:
                _send(conn, {"exit": os.waitstatus_to_exitcode(status)})
            except OSError:
                pass
            conn.close()
        if not readable:
            continue
        conn, _ = listener.accept()
        try:
            _, fds, _, _ = socket.recv_fds(conn, 1, 3)
            request = _recv(conn)
        except OSError:
            conn.close()
            continue
        differ = sorted(set(_load_time_env(request["env"]).items()) ^ set(server_env.items())) if request else []
        if request is None or len(fds) != 3 or differ:
            for fd in fds:
                os.close(fd)
            try:  # the client then runs the command in its own process
                _send(conn, {"refused": f"import-time environment differs: {', '.join(sorted({k for k, _ in differ}))}"
                             if differ else "malformed request"})
            except OSError:
                pass
            conn.close()
            counts["refused"] += 1
            continue
        counts["served"] += 1
        pid = os.fork()
        if pid == 0:
            _child(conn, listener, fds, request, entry)  # never returns
        for fd in fds:
            os.close(fd)
        started[pid] = time.perf_counter()
        try:
            _send(conn, {"pid": pid})
        except OSError:  # the client is gone already; its child notices and ends itself
            pass
        children[pid] = conn
    listener.close()
    for pid in children:  # the run is over: no stage outlives it
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    if ready_file:  # what the run reports: how many commands started warm
        atomic_write_json(ready_file, {"pid": os.getpid(), "failed": failed, **counts})


def launch(path: Path, env: dict[str, str], entry: str, modules: tuple[str, ...]):
    """Start a server at `path` with `env` (what the stages get), running commands as `entry` after importing
    `modules` (`serve`), and return its Popen at once: it
    preloads while the caller does other work; `wait_ready` tells when it serves. It and its
    children form their own process group, ended with the caller (tasks/processes.py)."""
    import subprocess

    from tasks import processes

    for p in (path, path.with_suffix(".ready")):
        p.unlink(missing_ok=True)
    return processes.spawn([sys.executable, "-m", "cli.forkserver", str(path), str(path.with_suffix(".ready")),
                            entry, *modules], env=env, stdin=subprocess.DEVNULL)


def wait_ready(proc, path: Path, timeout_s: float = 120.0) -> bool:
    """True once the server at `path` serves; False (and the server killed) if it failed to start."""
    t0 = time.perf_counter()
    while not path.with_suffix(".ready").exists():
        if proc.poll() is not None or time.perf_counter() - t0 > timeout_s:
            from tasks import processes

            processes.stop(proc, 0.0, signal.SIGKILL)
            return False
        time.sleep(0.05)
    return True


def start(path: Path, env: dict[str, str], entry: str, modules: tuple[str, ...], timeout_s: float = 120.0):
    """`launch` and wait: the Popen, or None if it did not come up (commands then start cold)."""
    proc = launch(path, env, entry, modules)
    return proc if wait_ready(proc, path, timeout_s) else None


def stop(proc, path: Path) -> dict:
    """Stop a server from `launch` and any child it left; return its counts of served and refused
    commands (empty if it had to be killed)."""
    from tasks import processes

    processes.stop(proc)
    try:
        counts = json.loads(path.with_suffix(".ready").read_text())
    except (OSError, ValueError):
        return {}
    return counts if "served" in counts else {}


if __name__ == "__main__":  # SOCKET READY_FILE ENTRY [MODULE ...]
    a = sys.argv[1:]
    serve(a[0], a[1], a[2], tuple(a[3:]))
