"""The Prefect parent flow without DVC (flows/pipeline.py) on the tiny two-experiment configuration:
the shared stages once, the two chains side by side (pipeline.concurrency 2), the latency chain's
select after its MAC twin's, the report last, all under one MLflow parent run."""
from __future__ import annotations

import json
from datetime import datetime

import pytest

from tests.repo_copy import make_repo_copy, run, stage_env, write_tiny_params

pytestmark = pytest.mark.slow

SCRIPT = '''
import asyncio, json, sys
from flows.pipeline import pipeline_flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.sorting import FlowRunSort

result = pipeline_flow(concurrency=2)

async def flow_runs():
    async with get_client() as client:
        runs = await client.read_flow_runs(limit=200, sort=FlowRunSort.START_TIME_ASC)
        flows = {i: (await client.read_flow(i)).name for i in {r.flow_id for r in runs}}
        return [{"flow": flows[r.flow_id], "experiment": r.parameters.get("experiment"), "state": r.state_name,
                 "start": r.start_time and r.start_time.isoformat(), "end": r.end_time and r.end_time.isoformat()}
                for r in runs]  # the parent flow run is still running

print("RESULT " + json.dumps({"result": result, "runs": asyncio.run(flow_runs())}))
'''


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    base = tmp_path_factory.mktemp("parent")
    repo = make_repo_copy(base / "repo")
    write_tiny_params(repo)
    # its own Prefect home: the temporary server's database holds this execution's flow runs only. Prefect's
    # ephemeral server creates that database before it answers: more than its default 20 s on a busy machine
    env = stage_env(PREFECT_HOME=str(base / "prefect"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")
    proc = run(["python", "-c", SCRIPT], repo, env, timeout=1800)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return repo, json.loads(line.removeprefix("RESULT "))


def _span(runs: list[dict], flow: str, experiment: str | None) -> tuple[datetime, datetime]:
    (r,) = [r for r in runs if r["flow"] == flow and r["experiment"] == experiment]
    assert r["state"] == "Completed", r
    return datetime.fromisoformat(r["start"]), datetime.fromisoformat(r["end"])


def test_every_stage_runs_once_each_chain_per_experiment(executed):
    _, out = executed
    stages = out["result"]["stages"]
    assert stages[:3] == ["data", "cost_tables", "latency_table"] and stages[-1] == "report"
    chains = {s for s in stages if "@" in s}
    assert len(chains) == 16 and {s.split("@")[1] for s in chains} == {"mac_small", "lat_small"}


def test_chains_run_side_by_side_and_the_latency_choice_waits_for_the_mac_choice(executed):
    _, out = executed
    runs = out["runs"]
    mac, lat = _span(runs, "search", "mac_small"), _span(runs, "search", "lat_small")
    assert mac[0] < lat[1] and lat[0] < mac[1], (mac, lat)  # the two searches overlapped
    assert _span(runs, "select", "lat_small")[0] >= _span(runs, "select", "mac_small")[1]
    report = _span(runs, "report", None)
    assert all(report[0] >= _span(runs, "benchmark", e)[1] for e in ("mac_small", "lat_small"))


def test_one_mlflow_parent_run_holds_every_stage_run_tagged_with_its_experiment(executed):
    repo, out = executed
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{repo}/mlflow.db")
    exp = client.get_experiment_by_name("squeezenas")
    runs = client.search_runs([exp.experiment_id], max_results=500)
    parent = out["result"]["parent_run_id"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    stages = {r.data.tags["squeezenas.stage"]: r.data.tags.get("squeezenas.experiment") for r in children}
    assert set(stages) == set(out["result"]["stages"])
    assert stages["train_fine@lat_small"] == "lat_small" and stages["report"] is None
    assert (repo / "outputs" / "report" / "table1.json").is_file()
