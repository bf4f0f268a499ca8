"""A throwaway copy of this project as its own git + DVC repository, for stage tests."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tasks.telemetry import TELEMETRY_OFF

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
    env.update(TELEMETRY_OFF)
    env.update(extra)
    return env


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None,
        timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env or stage_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


def make_repo_copy(dest: Path) -> Path:
    """Copy the working tree to `dest`, then make it a fresh git repository with one commit."""
    shutil.copytree(ROOT, dest, ignore=IGNORE)
    env = stage_env(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    run(["git", "init", "-q", "-b", "main"], dest, env)
    run(["git", "add", "-A"], dest, env)
    run(["git", "commit", "-q", "-m", "copy"], dest, env)
    return dest


# The whole pipeline at toy sizes: every stage of dvc.yaml in a minute or two, with the paper's experiment
# cut to one space: a MAC experiment and its latency twin (chosen under the MAC network's latency).
TINY = {
    "data": {"cityscapes_train": 6, "cityscapes_val": 2, "cityscapes_extra": 2,
             "cityscapes_size": {"height": 64, "width": 128}, "coco_train": 4, "coco_val": 2,
             "coco_size": {"height": 64, "width": 96}, "imagenet_classes": 2, "imagenet_train_per_class": 4,
             "imagenet_val_per_class": 2, "imagenet_size": 32},
    "cost_tables": {"spaces": ["small"]},
    "latency": {"input_size": {"height": 64, "width": 128}, "warmup": 1, "runs": 3, "min_time_s": 0.0, "rounds": 1,
                "spaces": ["small"], "fidelity": {"num_networks": 3, "seed": 0, "space": "small"},
                "model": {"fit_networks": 8}},
    "search": {"epochs": 1, "patch": {"height": 64, "width": 128}, "batch_size": 2, "log_every": 1},
    "sample": {"num_samples": 4, "workers": 1, "batch_size": 2},
    "train": {"pretrain_imagenet": {"epochs": 1, "patch": {"height": 32, "width": 32}, "batch_size": 4,
                                    "milestones": []},
              "pretrain_coco": {"epochs": 1, "patch": {"height": 64, "width": 64}, "batch_size": 2},
              "train_coarse": {"epochs": 1, "patch": {"height": 64, "width": 64}, "batch_size": 2},
              "train_fine": {"epochs": 1, "patch": {"height": 64, "width": 64}, "batch_size": 2,
                             "milestones": []}},
    "benchmark": {"input_size": {"height": 64, "width": 128}, "warmup": 1, "runs": 2, "rounds": 1,
                  "baselines": ["squeezenas_lat_small"]},
}
TINY_EXPERIMENTS = {
    "mac_small": {"space": "small", "objective": "macs", "cost_table": "outputs/cost_tables/macs_small.parquet",
                  "alpha": 0.5, "choice": {"rule": "nearest_cost", "metric": "macs",
                                           "reference": "squeezenas_mac_small"}},
    "lat_small": {"space": "small", "objective": "latency",
                  "cost_table": "outputs/latency/tables/latency_small.parquet", "alpha": 0.5,
                  "choice": {"rule": "best_under_budget", "metric": "latency_model", "reference": "mac_small"}},
}


def merge(base: dict, update: dict) -> dict:
    """`update` merged into `base` section by section (benchmark.weights is replaced whole)."""
    for k, v in update.items():
        base[k] = merge(base.get(k) or {}, v) if isinstance(v, dict) and k != "weights" else v
    return base


def write_tiny_params(repo: Path, extra: dict | None = None) -> dict:
    """params.yaml of `repo` at toy sizes with the two-experiment layer (and `extra` merged on top)."""
    import yaml

    params = merge(yaml.safe_load((repo / "params.yaml").read_text()), TINY)
    params["experiments"] = TINY_EXPERIMENTS
    merge(params, extra or {})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params
