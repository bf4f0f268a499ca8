"""Prefect wiring of the pipeline: deployments resolve to flows, one profile per device at a time."""
import importlib
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_prefect_yaml_entrypoints_are_flows():
    from prefect import Flow

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert spec["deployments"]
    for dep in spec["deployments"]:
        module, name = dep["entrypoint"].split(":")
        obj = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), name)
        assert isinstance(obj, Flow), dep["name"]
        assert dep["work_pool"]["name"] == "squeezenas"


def test_pipeline_flow_knows_every_dvc_stage():
    from flows.pipeline import PIPELINE_STAGES

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(PIPELINE_STAGES) == list(stages)


def test_one_profile_per_device_at_a_time(prefect_harness):
    from prefect.concurrency.sync import concurrency

    from flows.profile import device_slot

    name = device_slot("jetson-1")
    assert name == device_slot("jetson-1") == "device:jetson-1"
    spans = []

    def profile_job():
        with concurrency(name, occupy=1):
            start = time.monotonic()
            time.sleep(0.5)
            spans.append((start, time.monotonic()))

    threads = [threading.Thread(target=profile_job) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(spans) == 2
    (a0, a1), (b0, b1) = sorted(spans)
    assert b0 >= a1  # the second profile waited for the first


def _task_run_tags(client, flow_run_id, prefix: str = "step") -> list[set[str]]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                 sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=100)
    return [set(r.tags) for r in runs if r.name.startswith(prefix)]


def test_a_stage_command_s_tags_mark_its_flow_runs_not_its_task_runs(prefect_harness):
    """The host/pid tags of stage_api reach the flow run and its subflow runs (the orphan check finds
    them); task runs carry none, so none of them asks the API for tag concurrency slots."""
    from prefect import flow, tags, task
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    from tasks.flowruns import subflow_tags, untagged_task_runs

    @task
    def step(i: int) -> int:
        return i

    @flow(name="tags-plain")
    def plain() -> str:
        step(0)
        return FlowRunContext.get().flow_run.id

    @flow(name="tags-sub")
    @untagged_task_runs
    def sub() -> str:
        step(1)
        return FlowRunContext.get().flow_run.id

    @flow(name="tags-stage")
    @untagged_task_runs
    def stage() -> tuple[str, str]:
        step(2)
        step.submit(3).result()
        with subflow_tags():
            child = sub()
        return FlowRunContext.get().flow_run.id, child

    marks = {"squeezenas.host:test", "squeezenas.pid:1"}
    with tags(*marks):
        control = plain()
        parent, child = stage()
    with get_client(sync_client=True) as client:
        assert _task_run_tags(client, control) == [marks]  # Prefect's default, which the decorator undoes
        assert marks <= set(client.read_flow_run(parent).tags)
        assert marks <= set(client.read_flow_run(child).tags)
        assert _task_run_tags(client, child) == [set()]
        assert _task_run_tags(client, parent) == [set(), set()]
        # the subflow's stand-in task run in its parent is created by the flow engine, never run by the task engine
        assert len(_task_run_tags(client, parent, prefix="tags-sub")) == 1


def test_every_stage_flow_runs_its_tasks_untagged():
    from cli.stages import STAGE_COMMANDS
    from flows.profile import devices_flow, profile_flow
    from flows.sample import evaluate_flow
    from flows.train import FLOWS

    flows = [getattr(importlib.import_module(t.split(":")[0]), t.split(":")[1]) for t, _ in STAGE_COMMANDS.values()]
    for f in [*flows, *FLOWS.values(), profile_flow, devices_flow, evaluate_flow]:
        assert getattr(f.fn, "task_runs_untagged", False), f.name
