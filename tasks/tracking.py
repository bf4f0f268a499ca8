"""The one module that touches MLflow: stage runs with lineage tags (git commit, DVC hashes of the
stage's inputs from dvc.lock, the parent pipeline run and upstream runs)."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from tasks import processes

# MLflow must never try the network (telemetry); set before mlflow is imported.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

PARENT_RUN_ENV = "SQUEEZENAS_PARENT_RUN_ID"
UPSTREAM_TAG = "squeezenas.upstream_run_ids"
KILLED_TAG = "squeezenas.killed_by"  # the signal that ended a KILLED run


def tracking_uri(uri: str) -> str:
    """`sqlite:///relative.db` made absolute against the working directory: MLflow caches stores by
    URI string, so a relative one would follow whichever directory first used it in this process."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


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


def _dvc_files(root: Path) -> tuple[dict, dict, dict]:
    def load(name: str) -> dict:
        try:
            # libyaml's loader: PyYAML's pure-Python one spent ~0.4 s of every stage on dvc.lock
            return yaml.load((root / name).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
        except FileNotFoundError:
            return {}
    return load("dvc.yaml"), load("dvc.lock"), load("params.yaml")


def _paths(entries: list, params: dict) -> list[str]:
    out = []
    for e in entries or []:
        path = e if isinstance(e, str) else next(iter(e))
        out.append(_interpolate(path, params).rstrip("/"))
    return out


def upstream_stages(stage: str, root: str | Path = ".") -> list[str]:
    """The stages of dvc.yaml whose outputs `stage` depends on."""
    spec, _, params = _dvc_files(Path(root))
    stages = spec.get("stages", {})
    deps = _paths((stages.get(stage) or {}).get("deps"), params)
    found = []
    for name, entry in stages.items():
        outs = _paths((entry.get("outs") or []) + (entry.get("metrics") or []) + (entry.get("plots") or []), params)
        if name != stage and any(d == o or d.startswith(o + "/") for d in deps for o in outs):
            found.append(name)
    return found


def dvc_inputs(stage: str, root: str | Path = ".") -> dict[str, tuple[str, str]]:
    """{output path: (producing stage, md5)} for each dependency of `stage`, as dvc.lock records it."""
    spec, lock, params = _dvc_files(Path(root))
    deps = _paths((spec.get("stages", {}).get(stage) or {}).get("deps"), params)
    produced = {out["path"].rstrip("/"): (name, out.get("md5") or out.get("hash", ""))
                for name, entry in (lock.get("stages") or {}).items() for out in entry.get("outs", [])}
    inputs = {}
    for dep in deps:  # a dependency is an output, or a file inside an output directory
        for out, origin in produced.items():
            if dep == out or dep.startswith(out + "/"):
                inputs[out] = origin
    return inputs


def dvc_input_hashes(stage: str, root: str | Path = ".") -> dict[str, str]:
    """md5 of each dependency of `stage`, as dvc.lock records it for the stage that produced it."""
    return {path: md5 for path, (_, md5) in dvc_inputs(stage, root).items()}


def dvc_default_remote(root: str | Path = ".") -> str | None:
    """'NAME URL' of the DVC default remote in .dvc/config (local config overrides), or None."""
    import configparser

    config = configparser.ConfigParser()
    config.read([Path(root) / ".dvc" / "config", Path(root) / ".dvc" / "config.local"])
    name = config.get("core", "remote", fallback=None)
    if not name:
        return None
    url = config.get(f"'remote \"{name}\"'", "url", fallback="?")
    return f"{name} {url}"


@contextmanager
def stage_run(tracking, stage: str, params: dict[str, Any] | None = None,
              tags: dict[str, str] | None = None, upstream: list[str] | None = None) -> Iterator[Any]:
    """An MLflow run for one stage, nested under the pipeline's parent run when there is one."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(tracking.mlflow_uri))
    mlflow.set_experiment(tracking.experiment)
    all_tags = {"squeezenas.stage": stage, "git.commit": git_commit()}
    parent = os.environ.get(PARENT_RUN_ENV)
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    inputs = dvc_inputs(stage)
    for path, (_, md5) in inputs.items():
        all_tags[f"dvc.input.{path}"] = md5
    if upstream is None:
        upstream, external = [], []
        for up in upstream_stages(stage):
            rid = latest_stage_run_id(tracking, up)
            if rid:
                upstream.append(rid)
            else:
                external.append(up)
        # an upstream stage with no run in this store: its outputs came from elsewhere, typically a
        # teammate's `dvc push` and our `dvc pull` (a latency table measured once on the device)
        for path, (producer, md5) in inputs.items():
            if producer in external:
                all_tags[f"dvc.external.{path}"] = f"{md5} (stage {producer}: no run in this MLflow store)"
        if external:
            all_tags["dvc.remote"] = dvc_default_remote() or "none configured"
    if upstream:
        all_tags[UPSTREAM_TAG] = ",".join(upstream)
    all_tags.update(tags or {})
    all_tags.update(_process_tags())
    end_stale_runs(tracking, stage)
    run = mlflow.start_run(run_name=stage, tags=all_tags)
    try:
        if params:
            mlflow.log_params(_flatten(params))
        yield run
    except BaseException as e:
        status, end_tags = end_status(e)
        mlflow.set_tags(end_tags)
        mlflow.end_run(status)
        raise
    mlflow.end_run("FINISHED")


def end_status(exc: BaseException | None) -> tuple[str, dict[str, str]]:
    """How a run ends on `exc`: FINISHED, FAILED, or KILLED with the signal in a tag."""
    if exc is None:
        return "FINISHED", {}
    signum = processes.signal_of(exc)
    if signum is None:
        return "FAILED", {}
    return "KILLED", {KILLED_TAG: signal.Signals(signum).name}


def _process_tags() -> dict[str, str]:
    return {"squeezenas.host": socket.gethostname(), "squeezenas.pid": str(os.getpid())}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def end_stale_runs(tracking, stage: str) -> list[str]:
    """Mark KILLED the RUNNING runs of `stage` whose process on this host is gone (a kill -9 gives
    the process no chance to end its run, so the next run of the stage does). Returns their ids."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri(tracking.mlflow_uri))
    exp = client.get_experiment_by_name(tracking.experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], filter_string=(
        f"tags.`squeezenas.stage` = '{stage}' and attributes.status = 'RUNNING' "
        f"and tags.`squeezenas.host` = '{socket.gethostname()}'"))
    stale = [r.info.run_id for r in runs if not _alive(int(r.data.tags.get("squeezenas.pid", "0")))]
    for run_id in stale:
        client.set_tag(run_id, KILLED_TAG, "unknown: its process was gone (kill -9?) when a later run started")
        client.set_terminated(run_id, "KILLED")
    return stale


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
    """The newest run of `stage` (an upstream run id for lineage), or None. DVC may skip an
    unchanged upstream stage, so the newest run of any pipeline execution is taken."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(tracking.mlflow_uri))
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


def start_pipeline_run(tracking, tags: dict[str, str] | None = None) -> str:
    """Create the parent run of one pipeline execution; stage runs in other processes nest under it."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(tracking.mlflow_uri))
    exp = mlflow.set_experiment(tracking.experiment)
    client = mlflow.MlflowClient()
    end_stale_runs(tracking, "pipeline")
    run = client.create_run(exp.experiment_id, run_name="pipeline",
                            tags={"squeezenas.stage": "pipeline", "git.commit": git_commit(), **_process_tags(),
                                  **(tags or {})})
    return run.info.run_id


def end_pipeline_run(tracking, run_id: str, metrics: dict[str, float], status: str = "FINISHED",
                     tags: dict[str, str] | None = None) -> None:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(tracking.mlflow_uri))
    client = mlflow.MlflowClient()
    for k, v in metrics.items():
        client.log_metric(run_id, k, float(v))
    for k, v in (tags or {}).items():
        client.set_tag(run_id, k, v)
    client.set_terminated(run_id, status)


def lineage(tracking, model: str) -> list[dict]:
    """The chain from a registered model version (NAME or NAME/VERSION) back through its stage runs."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(tracking.mlflow_uri))
    client = mlflow.MlflowClient()
    name, _, version = model.partition("/")
    if version:
        mv = client.get_model_version(name, version)
    else:
        versions = client.search_model_versions(f"name = '{name}'")
        if not versions:
            raise ValueError(f"no registered model named {name!r} in {tracking.mlflow_uri}")
        mv = max(versions, key=lambda v: int(v.version))
    chain = [{"kind": "model", "name": name, "version": mv.version, "run_id": mv.run_id, "tags": dict(mv.tags)}]
    queue, seen = [mv.run_id], set()
    while queue:
        run_id = queue.pop(0)
        if not run_id or run_id in seen:
            continue
        seen.add(run_id)
        run = client.get_run(run_id)
        tags = run.data.tags
        chain.append({"kind": "run", "stage": tags.get("squeezenas.stage", "?"), "run_id": run_id,
                      "git_commit": tags.get("git.commit", ""), "parent": tags.get("mlflow.parentRunId", ""),
                      "inputs": {k.removeprefix("dvc.input."): v for k, v in tags.items() if k.startswith("dvc.input.")},
                      "external": {k.removeprefix("dvc.external."): v for k, v in tags.items()
                                   if k.startswith("dvc.external.")},
                      "remote": tags.get("dvc.remote", ""),
                      "datasets": {k.removeprefix("dataset.").removesuffix(".md5"): v for k, v in tags.items()
                                   if k.startswith("dataset.")},
                      "upstream": [u for u in tags.get(UPSTREAM_TAG, "").split(",") if u]})
        queue.extend(chain[-1]["upstream"])
    return chain


def log_model(model, onnx_path: str | Path, name: str, registered_model: str | None = None) -> dict[str, Any]:
    """Log a network in the active run in the PyTorch and ONNX flavours; with `registered_model`, register
    the PyTorch one under that name and the ONNX one under NAME-onnx. Returns the URIs and versions."""
    import mlflow.onnx
    import mlflow.pytorch
    import onnx
    import onnxruntime
    import torch

    # explicit requirements: inferring them would import-scan in a subprocess (slow, and may try the network)
    torch_req = f"torch=={torch.__version__.split('+')[0]}"
    # pickled, not 'pt2': a traced graph would be fixed to one input size (the decoder's pool depends on it)
    pt = mlflow.pytorch.log_model(model, name=f"{name}_pytorch", registered_model_name=registered_model,
                                  pip_requirements=[torch_req], serialization_format="pickle")
    ox = mlflow.onnx.log_model(onnx.load(str(onnx_path)), name=f"{name}_onnx", save_as_external_data=False,
                               registered_model_name=f"{registered_model}-onnx" if registered_model else None,
                               pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}"])
    return {"pytorch_uri": pt.model_uri, "onnx_uri": ox.model_uri,
            "pytorch_version": pt.registered_model_version, "onnx_version": ox.registered_model_version}
