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
