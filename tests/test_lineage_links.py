"""Lineage an auditor can click (issue 12): a tiny pipeline run by real `dvc repro`, whose stages use
tracking.stage_run in their own processes, MLflow on a sqlite file. Each run's description links its
upstream runs and names the DVC md5 of its inputs and outputs; the registered model version is
described, tagged, aliased and signed; parent runs name reused runs and the stage that failed."""
from __future__ import annotations

import subprocess

import mlflow
import pytest
import yaml

from cli.run import repro
from nas_core.config import load_params
from tasks import tracking
from tests.repo_copy import ROOT, run, stage_env

pytestmark = pytest.mark.slow  # three real `dvc repro`s of a 4-stage pipeline, one process per stage: ~2 min

PARAMS = {"paths": {"dataset": "data/cityscapes", "cost_tables": "outputs/cost_tables", "search": "outputs/search",
                   "benchmark": "outputs/benchmark"},
          "tracking": {"mlflow_uri": "sqlite:///mlflow.db", "experiment": "t", "registered_model": "tiny"}}
STAGE = "python -m tests.lineage_stage"
DVC_YAML = {"stages": {
    "data": {"cmd": f"{STAGE} data", "outs": ["${paths.dataset}"]},
    "cost_tables": {"cmd": f"{STAGE} cost_tables", "outs": ["${paths.cost_tables}"]},
    "search": {"cmd": f"{STAGE} search", "deps": ["${paths.dataset}", "${paths.cost_tables}/macs_small.parquet",
                                                  "search.txt"],
               "outs": ["${paths.search}/supernet.pt"]},
    "benchmark": {"cmd": f"{STAGE} benchmark", "deps": ["${paths.search}/supernet.pt", "${paths.dataset}"],
                  "outs": ["${paths.benchmark}/report.md"]},
}}


def pipeline(repo, **env) -> str:
    """One `squeezenas run`-like execution: a parent run, `dvc repro` through cli.run.repro, the end."""
    params = load_params(repo / "params.yaml")
    parent = tracking.start_pipeline_run(params.tracking)
    code, failure = repro(["dvc", "repro"], stage_env(PYTHONPATH=str(ROOT), SQUEEZENAS_PARENT_RUN_ID=parent, **env))
    tracking.end_pipeline_run(params.tracking, parent, {}, code == 0, failure)
    return parent


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("lineage")
    (repo / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    (repo / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (repo / "search.txt").write_text("1")
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    mp = pytest.MonkeyPatch()
    mp.chdir(repo)
    first = pipeline(repo)
    yield repo, first
    mp.undo()


def tags_of(run_id: str) -> dict[str, str]:
    return mlflow.MlflowClient().get_run(run_id).data.tags


def stage_runs(parent: str) -> dict[str, mlflow.entities.Run]:
    runs = mlflow.MlflowClient().search_runs([tracking.experiment_id(load_params().tracking)],
                                             f"tags.`mlflow.parentRunId` = '{parent}'")
    return {r.data.tags["squeezenas.stage"]: r for r in runs}


def link(run_id: str) -> str:
    return f"(#/experiments/{tracking.experiment_id(load_params().tracking)}/runs/{run_id})"


def test_one_dvc_md5_per_artifact_links_producer_and_readers(repo):
    _, first = repo
    lock = yaml.safe_load((repo[0] / "dvc.lock").read_text())["stages"]
    md5 = {o["path"]: o["md5"] for s in lock.values() for o in s["outs"]}
    runs = stage_runs(first)
    assert set(runs) == {"data", "cost_tables", "search", "benchmark"}
    # the run that made an artifact carries the md5 DVC recorded for it (a folder's .dir md5 too)
    assert runs["data"].data.tags["dvc.output.data/cityscapes"] == md5["data/cityscapes"]
    assert md5["data/cityscapes"].endswith(".dir")
    assert runs["cost_tables"].data.tags["dvc.output.outputs/cost_tables"] == md5["outputs/cost_tables"]
    assert runs["search"].data.tags["dvc.output.outputs/search/supernet.pt"] == md5["outputs/search/supernet.pt"]
    search = runs["search"].data.tags
    assert search["dvc.input.data/cityscapes"] == md5["data/cityscapes"]
    assert search["dvc.input.outputs/cost_tables"] == md5["outputs/cost_tables"]
    assert search["squeezenas.upstream.data"] == runs["data"].info.run_id
    assert search["squeezenas.upstream.cost_tables"] == runs["cost_tables"].info.run_id
    assert not any(k.startswith("dvc.external.") for k in search)
    # the description links each upstream run and its md5, and the parent
    note = search["mlflow.note.content"]
    for stage in ("data", "cost_tables"):
        assert f"[{stage}]{link(runs[stage].info.run_id)}" in note
    assert md5["data/cityscapes"] in note and md5["outputs/search/supernet.pt"] in note
    assert f"[pipeline]{link(first)}" in note
    # the links come first: the UI folds a description's later lines under "Show more"
    data, cost = runs["data"].info.run_id, runs["cost_tables"].info.run_id
    assert note.split("\n\n")[1] == f"Made from [data]{link(data)}, [cost_tables]{link(cost)}."
    # the dataset is an MLflow dataset input of the runs that read it, digest = the DVC md5
    for stage, context in (("data", "generated"), ("search", "input"), ("benchmark", "input")):
        inputs = mlflow.MlflowClient().get_run(runs[stage].info.run_id).inputs.dataset_inputs
        assert [(d.dataset.name, d.dataset.digest) for d in inputs] == [("cityscapes", md5["data/cityscapes"])]
        assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == context


def test_model_version_is_described_tagged_aliased_and_signed(repo):
    _, first = repo
    runs = stage_runs(first)
    client = mlflow.MlflowClient()
    mv = client.get_model_version_by_alias("tiny", "champion")
    assert mv.run_id == runs["benchmark"].info.run_id
    for stage, r in runs.items():
        assert f"{link(r.info.run_id)}" in mv.description, stage
        assert mv.tags[f"lineage.{stage}"] == r.info.run_id
    lock = yaml.safe_load((repo[0] / "dvc.lock").read_text())["stages"]
    assert mv.tags["dvc.input.data/cityscapes"] == lock["data"]["outs"][0]["md5"]
    assert mv.tags["dvc.input.outputs/cost_tables"] == lock["cost_tables"]["outs"][0]["md5"]
    registered = client.get_registered_model("tiny")
    assert registered.description
    assert {a: str(v) for a, v in registered.aliases.items()} == {"champion": str(mv.version)}
    assert registered.tags["squeezenas.experiment_id"] == tracking.experiment_id(load_params().tracking)
    assert client.get_model_version_by_alias("tiny-onnx", "champion").tags["lineage.data"] == runs["data"].info.run_id
    info = mlflow.models.get_model_info("models:/tiny@champion")
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 3, -1, -1)
    assert info.signature.outputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 19, -1, -1)
    # the logged model carries our metrics only, not the baselines'
    model = mlflow.get_logged_model(info.model_id)
    assert {m.key for m in model.metrics} == {"ours.class_miou"}


def test_parent_run_links_every_stage_run(repo):
    _, first = repo
    runs = stage_runs(first)
    note = tags_of(first)["mlflow.note.content"]
    assert note.startswith("**Pipeline run** finished. Ran ")
    assert all(f"[{stage}]{link(r.info.run_id)}" in note.splitlines()[0] for stage, r in runs.items())
    for stage, r in runs.items():
        assert f"[{stage}]{link(r.info.run_id)} ran here" in note


def test_squeezenas_lineage_follows_the_alias_to_the_hashes(repo):
    lock = yaml.safe_load((repo[0] / "dvc.lock").read_text())["stages"]
    text = subprocess.run(["squeezenas", "lineage", "tiny@champion"], cwd=repo[0], env=stage_env(),
                          capture_output=True, text=True, check=True).stdout
    assert "alias champion" in text
    assert f"input data/cityscapes  md5 {lock['data']['outs'][0]['md5']}" in text
    assert f"output outputs/cost_tables  md5 {lock['cost_tables']['outs'][0]['md5']}" in text
    assert "/#/experiments/" in text and text.rstrip().endswith("(each run's description links its upstream runs)")


def test_rerun_parent_names_reused_runs_and_the_failing_stage(repo):
    root, first = repo
    runs = stage_runs(first)
    (root / "search.txt").write_text("2")
    second = pipeline(root, LINEAGE_FAIL="benchmark")  # search reruns, benchmark fails inside its run
    tags = tags_of(second)
    assert tags["squeezenas.reused.data"] == runs["data"].info.run_id
    assert tags["squeezenas.reused.cost_tables"] == runs["cost_tables"].info.run_id
    assert (tags["squeezenas.failed_stage"], tags["squeezenas.error"]) == ("benchmark", "benchmark broke on purpose")
    assert f"[data]{link(runs['data'].info.run_id)} reused" in tags["mlflow.note.content"]
    assert f"reused [data]{link(runs['data'].info.run_id)}" in tags["mlflow.note.content"].splitlines()[0]
    search_run = stage_runs(second)["search"].info.run_id
    assert f"[search]{link(search_run)} ran here (finished)" in tags["mlflow.note.content"]
    assert "failed at stage `benchmark`: benchmark broke on purpose" in tags["mlflow.note.content"]
    assert mlflow.MlflowClient().get_run(second).info.status == "FAILED"
    # a stage that fails before its run starts: the error comes from its own last line on stderr
    (root / "search.txt").write_text("3")
    third = pipeline(root, LINEAGE_FAIL="search-early")
    tags = tags_of(third)
    assert tags["squeezenas.failed_stage"] == "search"
    assert tags["squeezenas.error"] == "squeezenas search: error: params.yaml: search.x: not a number"
    assert "squeezenas.reused.search" not in tags
    assert "- `search` failed before its run began: squeezenas search: error:" in tags["mlflow.note.content"]
    assert tags["squeezenas.reused.cost_tables"] == runs["cost_tables"].info.run_id
