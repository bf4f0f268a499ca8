"""A throwaway copy of this project as its own git + DVC repository, for stage tests."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# top-level products of a run, and caches at any depth
TOP_LEVEL = {".venv", ".git", "outputs", "data", "mlruns", "mlartifacts", "mlflow.db", "dvc.lock", ".dvc_remote",
             ".prefect", "dvc_plots", ".whl", ".gl", ".pytest_cache"}
ANYWHERE = shutil.ignore_patterns("__pycache__", "*.egg-info", "tmp", "cache")


def IGNORE(directory: str, names: list[str]) -> set[str]:
    ignored = set(ANYWHERE(directory, names))
    if Path(directory).resolve() == ROOT:
        ignored |= TOP_LEVEL & set(names)
    return ignored


def stage_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(DO_NOT_TRACK="1", DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.update(extra)
    return env


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env or stage_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def make_repo_copy(dest: Path) -> Path:
    """Copy the working tree to `dest`, then make it a fresh git repository with one commit."""
    shutil.copytree(ROOT, dest, ignore=IGNORE)
    env = stage_env(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    run(["git", "init", "-q", "-b", "main"], dest, env)
    run(["git", "add", "-A"], dest, env)
    run(["git", "commit", "-q", "-m", "copy"], dest, env)
    return dest
