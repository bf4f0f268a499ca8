"""pipeline.dispatch=deployments end to end: a real Prefect server, a process work pool, prefect.yaml's
deployments applied from a copy of this repository (flows/deploy.py), a real worker; the parent flow
runs the shared stages data, cost_tables and latency_table in its process and each experiment's search
as a flow run of the `search/search` deployment, picked up by the worker. Before the deployments
exist, the same run stops at once, naming the missing deployment."""
from __future__ import annotations

import json
import subprocess

import pytest

from cli.server import prefect_server
from tasks import processes
from tests.repo_copy import make_repo_copy, run, stage_env, write_tiny_params

pytestmark = pytest.mark.slow

EXPERIMENTS = ("mac_small", "lat_small")
RUN = '''
import json, sys
from flows.pipeline import pipeline_flow
try:
    result = pipeline_flow(overrides=("pipeline.dispatch=deployments",), stages=tuple(sys.argv[1:]))
    print("RESULT " + json.dumps(result))
except Exception as e:
    print("ERROR " + json.dumps(f"{type(e).__name__}: {e}"))
'''
FLOW_RUNS = '''
import json
from prefect.client.orchestration import get_client
from prefect.client.schemas.sorting import FlowRunSort

with get_client(sync_client=True) as client:
    runs = client.read_flow_runs(limit=200, sort=FlowRunSort.START_TIME_ASC)
    flows = {i: client.read_flow(i).name for i in {r.flow_id for r in runs}}
    deployments = {i: client.read_deployment(i).name for i in {r.deployment_id for r in runs} - {None}}
    out = []
    for r in runs:
        parent = client.read_task_run(r.parent_task_run_id) if r.parent_task_run_id else None
        out.append({"id": str(r.id), "flow": flows[r.flow_id], "name": r.name, "state": r.state_name,
                    "deployment": deployments.get(r.deployment_id), "parameters": r.parameters,
                    "parent_flow_run": parent and str(parent.flow_run_id)})
print("RUNS " + json.dumps(out))
'''


def _line(proc: subprocess.CompletedProcess, tag: str):
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(tag + " ")]
    assert lines, f"no {tag} line:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1].removeprefix(tag + " "))


@pytest.fixture(scope="module")
def dispatched(tmp_path_factory):
    base = tmp_path_factory.mktemp("dispatch")
    repo = make_repo_copy(base / "repo")
    write_tiny_params(repo)
    home = base / "prefect"
    with prefect_server(home) as (url, ready):
        ready()
        # the worker's flow runs import this repository's copy (the pull step sets their working directory)
        env = stage_env(PREFECT_API_URL=url, PREFECT_HOME=str(home), SQUEEZENAS_REPO=str(repo), PYTHONPATH=str(repo))
        run(["prefect", "work-pool", "create", "squeezenas", "--type", "process"], repo, env, timeout=120)
        missing = _line(run(["python", "-c", RUN, "data", "search"], repo, env, timeout=300), "ERROR")
        deployed = run(["python", "-m", "flows.deploy"], repo, env, timeout=300).stdout
        with (base / "worker.log").open("w") as log:
            worker = processes.spawn(["prefect", "worker", "start", "--pool", "squeezenas"], cwd=repo, env=env,
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            try:
                proc = run(["python", "-c", RUN, "data", "cost_tables", "latency_table", "search"], repo, env,
                           timeout=900)
            finally:
                processes.stop(worker)
        runs = _line(run(["python", "-c", FLOW_RUNS], repo, env, timeout=120), "RUNS")
    outcome = _line(proc, "RESULT") if "RESULT " in proc.stdout else _line(proc, "ERROR")
    assert isinstance(outcome, dict), f"{outcome}\nworker log:\n{(base / 'worker.log').read_text()[-4000:]}"
    return repo, missing, deployed, outcome, runs


def test_a_missing_deployment_stops_the_run_before_anything_runs_and_is_named(dispatched):
    _, missing, _, _, runs = dispatched
    assert missing.startswith("RuntimeError: pipeline.dispatch is 'deployments' but the Prefect server has no "
                              "deployment 'search/search' (create them: SQUEEZENAS_REPO=$PWD python -m "
                              "flows.deploy)"), missing
    assert len([r for r in runs if r["flow"] == "data"]) == 1  # the second execution's
    assert [r["state"] for r in runs if r["flow"] == "squeezenas-pipeline"].count("Failed") == 1


def test_every_chain_stage_deployment_is_applied_from_prefect_yaml(dispatched):
    _, _, deployed, _, _ = dispatched
    for name in ("search/search", "sample/sample", "select/select", "pretrain-imagenet/pretrain-imagenet",
                 "pretrain-coco/pretrain-coco", "train-coarse/train-coarse", "train-fine/train-fine",
                 "benchmark/benchmark", "squeezenas-pipeline/pipeline"):
        assert f"[deploy] {name} " in deployed, deployed


def test_each_experiments_search_is_a_flow_run_of_its_deployment_under_the_pipeline(dispatched):
    repo, _, _, result, runs = dispatched
    assert result["stages"] == ["data", "cost_tables", "latency_table", "search@mac_small", "search@lat_small"]
    (pipeline,) = [r for r in runs if r["flow"] == "squeezenas-pipeline" and r["state"] == "Completed"]
    assert pipeline["deployment"] is None  # run here, not from its deployment
    searches = {r["parameters"]["experiment"]: r for r in runs if r["flow"] == "search"}
    assert set(searches) == set(EXPERIMENTS)
    for name, r in searches.items():
        assert r["deployment"] == "search" and r["state"] == "Completed", r
        assert r["name"] == f"search@{name}" and r["parameters"]["params_file"] == "params.yaml"
        assert r["parent_flow_run"] == pipeline["id"], (r, pipeline)
        out = repo / "outputs" / "experiments" / name / "search"
        assert (out / "theta.parquet").is_file() and (out / "metrics.json").is_file()
    # the shared stages ran in the parent's process, as subflows
    for stage in ("data", "cost-tables", "latency-table"):
        shared = [r for r in runs if r["flow"] == stage]
        assert len(shared) == 1 and shared[0]["deployment"] is None and shared[0]["state"] == "Completed", shared


def test_the_dispatched_stage_runs_sit_under_the_mlflow_parent_run(dispatched):
    repo, _, _, result, _ = dispatched
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{repo}/mlflow.db")
    exp = client.get_experiment_by_name("squeezenas")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    children = {r.data.tags["squeezenas.stage"]: r.info.status for r in runs
                if r.data.tags.get("mlflow.parentRunId") == result["parent_run_id"]}
    assert children.get("search@mac_small") == "FINISHED" and children.get("search@lat_small") == "FINISHED", children
