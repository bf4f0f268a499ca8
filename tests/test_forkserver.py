"""The stage fork server of `squeezenas run` (cli/forkserver.py): a command run through it behaves
as the same command in its own process (streams, cwd, env, exit status, signals), or falls back."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cli import forkserver
from cli.run import STAGE_ENTRY, STAGE_PRELOAD

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ("import sys; from cli import forkserver; rc = forkserver.run_via_server(sys.argv[1:]); "
          "print('client imported torch:', 'torch' in sys.modules, file=sys.stderr); "
          "sys.exit(99 if rc is None else rc)")  # 99: no server used


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}")
    env.pop(forkserver.ENV, None)
    return env


@pytest.fixture(scope="module")
def server():
    folder = Path(tempfile.mkdtemp(prefix="sqz-"))  # unix socket paths must stay short
    sock = folder / "s.sock"
    proc = forkserver.start(sock, _env(), entry="forkserver_target:main", modules=())
    assert proc is not None, "the fork server did not start"
    yield sock, proc
    proc.terminate()
    proc.wait(10)


def client(sock: Path, *argv: str, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    env = dict(env or _env(), **{forkserver.ENV: str(sock)})
    return subprocess.Popen([sys.executable, "-c", CLIENT, *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def finish(p: subprocess.Popen, stdin: str | None = None) -> tuple[int, str, str]:
    out, err = p.communicate(stdin, timeout=60)
    return p.returncode, out, err


def test_streams_and_exit_status_reach_the_client(server):
    code, out, err = finish(client(server[0], "echo", "hello", "world"))
    assert (code, out) == (0, "hello world\n")
    assert "to stderr" in err


@pytest.mark.parametrize("argv, expected", [(("exit", "3"), 3), (("exit", "0"), 0), (("raise",), 1),
                                            (("signal",), 128 + signal.SIGKILL)])
def test_exit_codes_as_a_shell_reports_them(server, argv, expected):
    code, _, err = finish(client(server[0], *argv))
    assert code == expected
    if argv[0] == "raise":
        assert "RuntimeError: boom from the child" in err


def test_cwd_env_and_stdin_are_the_clients(server, tmp_path):
    env = dict(_env(), SQZ_PROBE="from-the-client")
    code, out, _ = finish(client(server[0], "where", "SQZ_PROBE", env=env, cwd=tmp_path))
    cwd, value, parent = out.split()
    assert (code, Path(cwd).resolve(), value) == (0, tmp_path.resolve(), "from-the-client")
    assert int(parent) == server[1].pid  # the work ran in the server's child, not in the client
    code, out, _ = finish(client(server[0], "stdin", stdin=subprocess.PIPE), stdin="piped in")
    assert (code, out) == (0, "PIPED IN\n")


def test_a_different_import_time_environment_falls_back(server):
    env = dict(_env(), OMP_NUM_THREADS="7")  # read by OpenMP when it loads: a forked child cannot honour it
    code, out, err = finish(client(server[0], "echo", "x", env=env))
    assert (code, out) == (99, "")
    assert "differs: OMP_NUM_THREADS" in err


def test_no_server_falls_back(tmp_path):
    code, out, _ = finish(client(tmp_path / "absent.sock", "echo", "x"))
    assert (code, out) == (99, "")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    proc = Path(f"/proc/{pid}")
    status = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] if proc.exists() else "X"
    return status not in ("Z", "X")


def _wait_gone(pid: int, timeout: float = 20.0) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_killed_client_ends_the_child(server, how):
    """SIGTERM is forwarded (the client then reports 143); SIGKILL cannot be, so the child notices
    its client is gone and ends itself: no stage outlives the process DVC started."""
    p = client(server[0], "sleep", "60")
    child = int(p.stdout.readline())
    assert _alive(child)
    p.send_signal(getattr(signal, how))
    p.wait(30)
    assert _wait_gone(child), f"the child {child} outlived its client"
    if how == "SIGTERM":
        assert p.returncode == 128 + signal.SIGTERM


def test_the_real_cli_through_the_server_of_a_run(tmp_path):
    """`squeezenas describe` through a server started as `squeezenas run` starts it (the stage modules
    preloaded): the same output as a cold process, and the client never imports torch."""
    env = _env()
    cold = subprocess.run([sys.executable, "-m", "cli.main", "describe", "squeezenas_lat_small"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert cold.returncode == 0, cold.stderr
    folder = Path(tempfile.mkdtemp(prefix="sqz-"))
    proc = forkserver.start(folder / "s.sock", env, STAGE_ENTRY, STAGE_PRELOAD)
    assert proc is not None
    try:
        code, out, err = finish(client(folder / "s.sock", "describe", "squeezenas_lat_small"))
    finally:
        proc.terminate()
        proc.wait(10)
    assert (code, out) == (0, cold.stdout)
    assert "client imported torch: False" in err
