"""The one module that touches MLflow: stage runs with lineage tags (git commit, DVC hashes of the
stage's inputs from dvc.lock, the parent pipeline run and upstream runs)."""
from __future__ import annotations

import os
import re
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

# MLflow must never try the network (telemetry); set before mlflow is imported.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

PARENT_RUN_ENV = "SQUEEZENAS_PARENT_RUN_ID"
UPSTREAM_TAG = "squeezenas.upstream_run_ids"


def git_commit(cwd: str | Path = ".") -> str:
    """HEAD's commit, suffixed '-dirty' when tracked files differ from it; 'unknown' outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _interpolate(text: str, params: dict) -> str:
    """Resolve dvc.yaml's ${a.b} references against params.yaml."""
    def lookup(m: re.Match) -> str:
        node: Any = params
        for k in m[1].split("."):
            node = node[k]
        return str(node)
    return re.sub(r"\$\{([^}]+)\}", lookup, text)


def dvc_input_hashes(stage: str, root: str | Path = ".") -> dict[str, str]:
    """md5 of each dependency of `stage`, as dvc.lock records it for the stage that produced it."""
    root = Path(root)
    try:
        spec = yaml.safe_load((root / "dvc.yaml").read_text())
        lock = yaml.safe_load((root / "dvc.lock").read_text()) or {}
        params = yaml.safe_load((root / "params.yaml").read_text()) or {}
    except FileNotFoundError:
        return {}
    deps = (spec.get("stages", {}).get(stage) or {}).get("deps", [])
    produced = {out["path"].rstrip("/"): out.get("md5") or out.get("hash", "")
                for entry in (lock.get("stages") or {}).values() for out in entry.get("outs", [])}
    hashes = {}
    for dep in deps:
        path = _interpolate(dep, params).rstrip("/")
        if path in produced:
            hashes[path] = produced[path]
    return hashes


@contextmanager
def stage_run(tracking, stage: str, params: dict[str, Any] | None = None,
              tags: dict[str, str] | None = None, upstream: list[str] | None = None) -> Iterator[Any]:
    """An MLflow run for one stage, nested under the pipeline's parent run when there is one."""
    import mlflow

    mlflow.set_tracking_uri(tracking.mlflow_uri)
    mlflow.set_experiment(tracking.experiment)
    all_tags = {"squeezenas.stage": stage, "git.commit": git_commit()}
    parent = os.environ.get(PARENT_RUN_ENV)
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    for path, md5 in dvc_input_hashes(stage).items():
        all_tags[f"dvc.input.{path}"] = md5
    if upstream:
        all_tags[UPSTREAM_TAG] = ",".join(upstream)
    all_tags.update(tags or {})
    with mlflow.start_run(run_name=stage, tags=all_tags) as run:
        if params:
            mlflow.log_params(_flatten(params))
        yield run


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v if not isinstance(v, (list, tuple)) else ",".join(map(str, v))
    return out


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    import mlflow

    mlflow.log_artifact(str(path), artifact_path)


def latest_stage_run_id(tracking, stage: str) -> str | None:
    """The newest finished run of `stage` (an upstream run id for lineage), or None."""
    import mlflow

    mlflow.set_tracking_uri(tracking.mlflow_uri)
    exp = mlflow.get_experiment_by_name(tracking.experiment)
    if exp is None:
        return None
    runs = mlflow.search_runs([exp.experiment_id], filter_string=f"tags.`squeezenas.stage` = '{stage}'",
                              order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
    return runs[0].info.run_id if runs else None


def dataset_digest(path: str | Path) -> str:
    """md5 over the sorted relative paths and contents of every file under `path`."""
    import hashlib

    root = Path(path)
    h = hashlib.md5()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode())
        h.update(hashlib.md5(f.read_bytes()).digest())
    return h.hexdigest()


def log_dataset(path: str | Path, name: str, summary: dict | None = None, context: str = "train") -> str:
    """Log a dataset folder as an MLflow input (name, local source, content digest); returns the digest."""
    import warnings

    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    digest = dataset_digest(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "source can be interpreted in multiple ways": it is local either way
        source = resolve_dataset_source(str(Path(path).resolve()))
    mlflow.log_input(MetaDataset(source, name=name, digest=digest[:16]), context=context)
    mlflow.set_tag(f"dataset.{name}.md5", digest)
    if summary:
        mlflow.log_dict(summary, f"datasets/{name}.json")
    return digest
