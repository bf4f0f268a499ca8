"""Launching a `squeezenas` command the way a terminal runs a foreground job, for the tests that signal or kill it
(tests/test_signals.py, tests/test_search_stage.py): one copy, so both send their signals to the same setup."""
from __future__ import annotations

import signal
import subprocess
from pathlib import Path


def _default_sigint() -> None:
    """Runs in the child before exec: pytest started in the background of a shell inherits SIGINT ignored, and an
    ignored signal stays ignored across exec, so without this a test's Ctrl-C would never reach the command."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def launch(args: list[str], cwd: Path, env: dict[str, str], stderr: int = subprocess.PIPE) -> subprocess.Popen:
    """Start `args` in its own session and process group, as a shell gives a foreground job (a terminal's Ctrl-C is
    SIGINT to that group, `os.killpg(proc.pid, ...)` here), with SIGINT at its default as a foreground job has it.
    stdout is piped as text; `stderr` is piped too unless the caller merges it (subprocess.STDOUT)."""
    return subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
                            start_new_session=True, preexec_fn=_default_sigint)
