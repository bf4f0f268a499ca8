"""The one module that touches MLflow: stage runs whose tags and Markdown descriptions make the lineage
clickable in the UI (git commit, the DVC md5 of every input and output, links to the parent pipeline run
and the upstream runs), and the registered model described, tagged and aliased with that lineage."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from tasks import processes
from tasks.dvc_files import (
    DATA_STAGE,
    dvc_default_remote,
    dvc_inputs,
    dvc_md5,
    expanded_stages,
    locked_outputs,
    stage_outputs,
)
from tasks.telemetry import quiet_telemetry

quiet_telemetry()  # MLflow must never try the network: before mlflow is imported

PARENT_RUN_ENV = "SQUEEZENAS_PARENT_RUN_ID"
UPSTREAM_TAG = "squeezenas.upstream_run_ids"  # comma-separated; squeezenas.upstream.<stage> names each one
UPSTREAM_STAGE_TAG = "squeezenas.upstream."
REUSED_TAG = "squeezenas.reused."  # on a parent run: <stage> -> the earlier run whose outputs DVC reused
FAILED_STAGE_TAG = "squeezenas.failed_stage"
ERROR_TAG = "squeezenas.error"
# one hash per artifact, the DVC md5: output of the run that made it, input of the runs that read it
INPUT_TAG, OUTPUT_TAG, EXTERNAL_TAG = "dvc.input.", "dvc.output.", "dvc.external."
NOTE_TAG = "mlflow.note.content"  # a run's description, Markdown in the UI
MODEL_ALIAS = "champion"  # the newest benchmarked version ("latest" is reserved by MLflow)
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


def run_link(experiment_id: str, run_id: str, label: str) -> str:
    """A Markdown link to a run that MLflow 3's UI renders in a description (its routes are #/...)."""
    return f"[{label}](#/experiments/{experiment_id}/runs/{run_id})"


def _first_line(error: BaseException | str) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:500]


def _experiment(tracking):
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(tracking.mlflow_uri))
    return mlflow.set_experiment(tracking.experiment)


def experiment_id(tracking) -> str:
    """The id of the configured experiment (created if missing), as the UI's URLs name it."""
    return _experiment(tracking).experiment_id


def _producing_run(client, experiment_id: str, path: str, md5: str):
    """The newest finished run that tagged `md5` as its output `path`, or None."""
    runs = client.search_runs([experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
                              filter_string=f"tags.`{OUTPUT_TAG}{path}` = '{md5}' and attributes.status = 'FINISHED'")
    return runs[0] if runs else None


def _link_inputs(client, experiment_id: str, inputs: dict[str, tuple[str, str]]
                 ) -> tuple[dict[str, str], str, list[str]]:
    """Tags, a one-line summary and description lines for a stage's inputs: each one's md5, and the
    run that made it (squeezenas.upstream.<stage>) or, when no run here made that md5, where DVC got it."""
    tags, upstream, lines = {}, {}, []
    remote = dvc_default_remote() or "none configured"
    for path, (stage, md5) in inputs.items():
        tags[f"{INPUT_TAG}{path}"] = md5
        run = _producing_run(client, experiment_id, path, md5)
        if run:
            upstream.setdefault(stage, run.info.run_id)
            lines.append(f"- `{path}` md5 `{md5}`, made by {run_link(experiment_id, run.info.run_id, stage)}")
        else:  # typically a teammate's `dvc push` and our `dvc pull`
            tags[f"{EXTERNAL_TAG}{path}"] = f"{md5} (stage {stage}: no run in this MLflow store made it)"
            tags["dvc.remote"] = remote
            lines.append(f"- `{path}` md5 `{md5}`, from DVC (remote `{remote}`): no run here made it")
    tags.update({f"{UPSTREAM_STAGE_TAG}{tag_key(s)}": rid for s, rid in upstream.items()})
    if upstream:
        tags[UPSTREAM_TAG] = ",".join(dict.fromkeys(upstream.values()))
    summary = "Made from " + ", ".join(run_link(experiment_id, rid, s) for s, rid in upstream.items()) + "."
    return tags, summary if upstream else "", lines


def _stage_note(stage: str, experiment_id: str, parent: str | None, commit: str, summary: str, inputs: list[str],
                outputs: dict[str, str] | None = None) -> str:
    """The run's description (mlflow.note.content): where it sits in the pipeline, by links. The links
    come first: the UI shows a description's first lines until "Show more" is clicked."""
    head = f"**Stage `{stage}`**, git `{commit[:12]}`"
    if parent:
        head += f", in pipeline run {run_link(experiment_id, parent, 'pipeline')}"
    lines = [head, "", *([summary, ""] if summary else [])]
    lines += ["Inputs (DVC md5):", *(inputs or ["- none from other stages"])]
    if outputs is not None:
        lines += ["", "Outputs (DVC md5):", *[f"- `{p}` md5 `{m}`" for p, m in outputs.items()]]
    return "\n".join(lines)


def _log_dataset_inputs(inputs: dict[str, tuple[str, str]]) -> None:
    """The datasets this stage reads, as MLflow dataset inputs whose digest is their DVC md5."""
    for path, (stage, md5) in inputs.items():
        if stage == DATA_STAGE and Path(path).is_dir():
            _log_input(path, Path(path).name, md5, "input")


def tag_key(stage: str) -> str:
    """A stage name as part of a tag key: MLflow keys allow no '@' (search@lat_small -> search:lat_small)."""
    return stage.replace("@", ":")


@contextmanager
def stage_run(tracking, stage: str, params: dict[str, Any] | None = None,
              tags: dict[str, str] | None = None) -> Iterator[Any]:
    """An MLflow run for one stage, nested under the pipeline's parent run when there is one. Each
    input is tagged with its DVC md5 and linked to the run whose output it was; at the end each
    output is tagged with its own DVC md5, the hash the next stage will read from dvc.lock."""
    import mlflow

    exp_id = _experiment(tracking).experiment_id
    client = mlflow.MlflowClient()
    commit, parent = git_commit(), os.environ.get(PARENT_RUN_ENV)
    all_tags = {"squeezenas.stage": stage, "git.commit": commit}
    if "@" in stage:  # a stage of an experiment's chain (dvc.yaml's foreach): search@lat_small
        all_tags["squeezenas.experiment"] = stage.split("@", 1)[1]
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    inputs = dvc_inputs(stage)
    input_tags, summary, input_lines = _link_inputs(client, exp_id, inputs)
    all_tags.update(input_tags)
    all_tags[NOTE_TAG] = _stage_note(stage, exp_id, parent, commit, summary, input_lines)
    all_tags.update(tags or {})
    all_tags.update(_process_tags())
    end_stale_runs(tracking, stage)
    run = mlflow.start_run(run_name=stage, tags=all_tags)
    try:
        if params:
            mlflow.log_params(_flatten(params))
        _log_dataset_inputs(inputs)
        try:
            yield run
        except Exception as e:
            mlflow.set_tag(ERROR_TAG, _first_line(e))
            raise
        known = client.get_run(run.info.run_id).data.tags  # log_dataset has hashed the datasets already
        outputs = {p: known.get(f"{OUTPUT_TAG}{p}") or dvc_md5(p) for p in stage_outputs(stage) if Path(p).exists()}
        mlflow.set_tags({**{f"{OUTPUT_TAG}{p}": m for p, m in outputs.items()},
                         NOTE_TAG: _stage_note(stage, exp_id, parent, commit, summary, input_lines, outputs)})
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
    stale = [r.info.run_id for r in runs if not processes.pid_alive(int(r.data.tags.get("squeezenas.pid", "0")))]
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


def metric_name(text: str) -> str:
    """`text` (e.g. a dataset's class name) as part of an MLflow metric key, which allows only letters, digits,
    '_', '-', '.', ' ' and '/'."""
    return re.sub(r"[^\w\-. /]", "_", text)


def class_iou_metrics(row: dict) -> dict[str, float]:
    """A benchmark or Table 1 row's per-class IoUs as metrics `<network>.iou.<class>` (classes without one left out)."""
    return {f"{row['network']}.iou.{metric_name(c)}": v for c, v in (row.get("class_iou") or {}).items()
            if v is not None}


def log_metrics(metrics: dict[str, float], step: int | None = None, model_id: str | None = None) -> None:
    """Metrics of the active run, linked to the logged model `model_id` only when given (MLflow's
    fluent API would link them to every model the run has logged, the baselines' included)."""
    import time

    import mlflow
    from mlflow.entities import Metric

    run_id, now = mlflow.active_run().info.run_id, int(time.time() * 1000)
    rows = [Metric(k, float(v), now, step or 0, model_id=model_id, run_id=run_id) for k, v in metrics.items()]
    mlflow.MlflowClient().log_batch(run_id, metrics=rows)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    import mlflow

    mlflow.log_artifact(str(path), artifact_path)


def _log_input(path: str | Path, name: str, md5: str, context: str) -> None:
    import warnings

    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "source can be interpreted in multiple ways": it is local either way
        source = resolve_dataset_source(str(Path(path).resolve()))
    mlflow.log_input(MetaDataset(source, name=name, digest=md5), context=context)


def log_dataset(path: str | Path, name: str, summary: dict | None = None) -> str:
    """Log a dataset folder this run made: an MLflow dataset input whose digest is the folder's DVC md5,
    tagged as the run's output `path` (as dvc.yaml names it). Returns the md5."""
    import mlflow

    md5 = dvc_md5(path)
    _log_input(path, name, md5, "generated")
    mlflow.set_tags({f"dataset.{name}.md5": md5, f"{OUTPUT_TAG}{Path(path).as_posix().rstrip('/')}": md5})
    if summary:
        mlflow.log_dict(summary, f"datasets/{name}.json")
    return md5


def start_pipeline_run(tracking, tags: dict[str, str] | None = None) -> str:
    """Create the parent run of one pipeline execution; stage runs in other processes nest under it."""
    import mlflow

    exp = _experiment(tracking)
    end_stale_runs(tracking, "pipeline")
    run = mlflow.MlflowClient().create_run(exp.experiment_id, run_name="pipeline", tags={
        "squeezenas.stage": "pipeline", "git.commit": git_commit(), **_process_tags(), **(tags or {})})
    return run.info.run_id


def _pipeline_stage_lines(client, experiment_id: str, ran: dict, failure: tuple[str, str] | None
                          ) -> tuple[dict[str, str], list[str]]:
    """A parent run's line per stage of dvc.yaml: the run under it, the stage that failed before its
    run began, the earlier run that made the current outputs DVC reused (tagged
    squeezenas.reused.<stage>), or that it did not run."""
    tags, lines, locked = {}, [], locked_outputs()
    for stage in expanded_stages():  # in dvc.yaml's (pipeline) order
        if stage in ran:
            run = ran[stage]
            lines.append(f"- {run_link(experiment_id, run.info.run_id, stage)} ran here ({run.info.status.lower()})")
            continue
        if failure and failure[0] == stage:
            lines.append(f"- `{stage}` failed before its run began: {_first_line(failure[1])}")
            continue
        made = next((r for p in stage_outputs(stage) if locked.get(p, ("", ""))[0] == stage
                     for r in [_producing_run(client, experiment_id, p, locked[p][1])] if r), None)
        if made:
            tags[f"{REUSED_TAG}{tag_key(stage)}"] = made.info.run_id
            lines.append(f"- {run_link(experiment_id, made.info.run_id, stage)} reused: its current outputs "
                         "(dvc.lock) were made by this earlier run")
        else:
            lines.append(f"- `{stage}` not run" + (" (stopped by the failure)" if failure else ""))
    return tags, lines


def _pipeline_summary(experiment_id: str, ran: dict, tags: dict[str, str]) -> str:
    """One line of links, first in the description (the UI folds the rest under "Show more")."""
    parts = []
    if ran:
        parts.append("Ran " + ", ".join(run_link(experiment_id, r.info.run_id, s) for s, r in ran.items()))
    reused = {k.removeprefix(REUSED_TAG): v for k, v in tags.items() if k.startswith(REUSED_TAG)}
    if reused:
        parts.append("reused " + ", ".join(run_link(experiment_id, rid, s) for s, rid in reused.items()))
    text = "; ".join(parts)
    return text[:1].upper() + text[1:] + "." if parts else ""


def end_pipeline_run(tracking, run_id: str, metrics: dict[str, float], ok: bool,
                     failure: tuple[str, str] | None = None, status: str | None = None,
                     tags: dict[str, str] | None = None) -> None:
    """Finish the parent run with a description linking every stage's run (_pipeline_stage_lines).
    A failed run is tagged with the failing stage and the first line of its error: the stage run's
    own when it got that far, else `failure` (stage, error) as its caller saw it. `status` (KILLED
    after a signal, with `tags` naming it) overrides FINISHED/FAILED."""
    import mlflow

    exp_id = _experiment(tracking).experiment_id
    client = mlflow.MlflowClient()
    for k, v in metrics.items():
        client.log_metric(run_id, k, float(v))
    children = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{run_id}'",
                                  order_by=["attributes.start_time ASC"])
    ran = {c.data.tags.get("squeezenas.stage"): c for c in children}  # a stage's last run under this parent
    failed = [c for c in children if c.info.status == "FAILED"]
    if not ok and failed:
        failure = (failed[-1].data.tags.get("squeezenas.stage", "?"),
                   failed[-1].data.tags.get(ERROR_TAG) or (failure[1] if failure else "see the stage's run"))
    extra = dict(tags or {})
    tags, lines = _pipeline_stage_lines(client, exp_id, ran, None if ok else failure)
    head = "**Pipeline run** " + ("finished" if ok else "failed")
    if not ok and failure:
        tags.update({FAILED_STAGE_TAG: failure[0], ERROR_TAG: _first_line(failure[1])})
        head += f" at stage `{failure[0]}`: {_first_line(failure[1])}"
    tags[NOTE_TAG] = "\n".join([head + ". " + _pipeline_summary(exp_id, ran, tags), "", "Stage runs:", *lines])
    for k, v in {**tags, **extra}.items():
        client.set_tag(run_id, k, v)
    client.set_terminated(run_id, status or ("FINISHED" if ok else "FAILED"))


def _walk(client, run_id: str) -> Iterator[Any]:
    """The run `run_id` and every run upstream of it, breadth first, each once."""
    queue, seen = [run_id], set()
    while queue:
        rid = queue.pop(0)
        if not rid or rid in seen:
            continue
        seen.add(rid)
        run = client.get_run(rid)
        yield run
        queue.extend(u for u in run.data.tags.get(UPSTREAM_TAG, "").split(",") if u)


def _tagged(tags: dict[str, str], prefix: str, suffix: str = "") -> dict[str, str]:
    return {k.removeprefix(prefix).removesuffix(suffix): v for k, v in tags.items() if k.startswith(prefix)
            and k.endswith(suffix)}


def lineage(tracking, model: str) -> list[dict]:
    """The chain from a registered model version (NAME, NAME/VERSION or NAME@ALIAS) back through its stage runs."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(tracking.mlflow_uri))
    client = mlflow.MlflowClient()
    name, _, version = model.partition("/")
    name, _, alias = name.partition("@")
    if alias:
        mv = client.get_model_version_by_alias(name, alias)
    elif version:
        mv = client.get_model_version(name, version)
    else:
        versions = client.search_model_versions(f"name = '{name}'")
        if not versions:
            raise ValueError(f"no registered model named {name!r} in {tracking.mlflow_uri}")
        mv = max(versions, key=lambda v: int(v.version))
    chain = [{"kind": "model", "name": name, "version": mv.version, "run_id": mv.run_id, "tags": dict(mv.tags),
              "aliases": list(mv.aliases), "description": mv.description or ""}]
    for run in _walk(client, mv.run_id):
        tags = run.data.tags
        chain.append({"kind": "run", "stage": tags.get("squeezenas.stage", "?"), "run_id": run.info.run_id,
                      "git_commit": tags.get("git.commit", ""), "parent": tags.get("mlflow.parentRunId", ""),
                      "inputs": _tagged(tags, INPUT_TAG), "outputs": _tagged(tags, OUTPUT_TAG),
                      "external": _tagged(tags, EXTERNAL_TAG), "remote": tags.get("dvc.remote", ""),
                      "datasets": _tagged(tags, "dataset.", ".md5"),
                      "upstream": [u for u in tags.get(UPSTREAM_TAG, "").split(",") if u]})
    return chain


def _signature(onnx_model):
    """(N, 3, H, W) float32 image in, (N, classes, H, W) logits out; H and W are free (multiples of 16)."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    graph = onnx_model.graph
    classes = graph.output[0].type.tensor_type.shape.dim[1].dim_value or -1
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1), graph.input[0].name)]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, classes, -1, -1),
                                                     graph.output[0].name)]))


def _lineage_record(client, run) -> tuple[str, dict[str, str]]:
    """A model version's description, links from the run `run` that logged it to every upstream stage run,
    and its lineage tags (lineage.<stage> = run id, dvc.input.<path> = md5, git.commit)."""
    exp_id = run.info.experiment_id
    lines = [f"SqueezeNAS network logged by the {run_link(exp_id, run.info.run_id, 'benchmark run')}.", "",
             "Lineage, from this model back to the data (each run's description links its own inputs):"]
    tags = {}
    for r in _walk(client, run.info.run_id):
        stage = r.data.tags.get("squeezenas.stage", "?")
        tags[f"lineage.{tag_key(stage)}"] = r.info.run_id
        inputs = _tagged(r.data.tags, INPUT_TAG)
        tags.update({f"{INPUT_TAG}{p}": m for p, m in inputs.items()})
        lines.append(f"- {run_link(exp_id, r.info.run_id, stage)}, git `{r.data.tags.get('git.commit', '')[:12]}`"
                     + "".join(f"\n  - `{p}` md5 `{m}`" for p, m in inputs.items()))
    tags["git.commit"] = run.data.tags.get("git.commit", "")
    return "\n".join(lines), tags


def _register(client, name: str, model_id: str, run, lineage: tuple[str, dict[str, str]]) -> str:
    """Register the logged model `model_id` as a new version of `name`, created with its lineage tags (one
    call, not one per tag) and described by its lineage; point the alias MODEL_ALIAS at it (MLflow 3
    replaces stages by aliases). Returns the version."""
    import mlflow

    description, tags = lineage
    version = mlflow.register_model(f"models:/{model_id}", name, tags=tags).version
    client.update_model_version(name, version, description=description)
    client.update_registered_model(name, description=(
        f"SqueezeNAS networks of experiment {run.info.experiment_id}, one version per benchmark run; alias "
        f"`{MODEL_ALIAS}` is the newest. Each version's description links its stage runs back to the dataset and "
        "cost-table hashes."))
    client.set_registered_model_tag(name, "squeezenas.experiment_id", run.info.experiment_id)
    client.set_registered_model_alias(name, MODEL_ALIAS, version)
    return version


def log_model(model, onnx_path: str | Path, name: str, registered_model: str | None = None) -> dict[str, Any]:
    """Log a network in the active run in the PyTorch and ONNX flavours, with a signature; with
    `registered_model`, register the PyTorch one under that name and the ONNX one under NAME-onnx, each
    version described and tagged with its lineage and given the alias MODEL_ALIAS. Returns the URIs,
    versions and the PyTorch model's id (to link its metrics)."""
    import mlflow.onnx
    import mlflow.pytorch
    import onnx
    import onnxruntime
    import torch

    onnx_model = onnx.load(str(onnx_path))
    signature = _signature(onnx_model)
    # explicit requirements: inferring them would import-scan in a subprocess (slow, and may try the network)
    torch_req = f"torch=={torch.__version__.split('+')[0]}"
    # pickled, not 'pt2': a traced graph would be fixed to one input size (the decoder's pool depends on it)
    pt = mlflow.pytorch.log_model(model, name=f"{name}_pytorch", pip_requirements=[torch_req],
                                  serialization_format="pickle", signature=signature)
    onnx_reqs = [f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}"]
    ox = mlflow.onnx.log_model(onnx_model, name=f"{name}_onnx", save_as_external_data=False, signature=signature,
                               pip_requirements=onnx_reqs)
    versions = {"pytorch_version": None, "onnx_version": None}
    if registered_model:
        client = mlflow.MlflowClient()
        run = client.get_run(mlflow.active_run().info.run_id)
        record = _lineage_record(client, run)
        versions = {"pytorch_version": _register(client, registered_model, pt.model_id, run, record),
                    "onnx_version": _register(client, f"{registered_model}-onnx", ox.model_id, run, record)}
    return {"pytorch_uri": pt.model_uri, "onnx_uri": ox.model_uri, "pytorch_model_id": pt.model_id, **versions}
