"""pipeline.dispatch=deployments runs every chain stage as a flow run of its prefect.yaml deployment:
the one table in flows/pipeline.py (DEPLOYMENTS) and prefect.yaml must agree (cheap, no server)."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from flows.pipeline import CHAIN, DEPLOYMENTS, deployment_name

ROOT = Path(__file__).resolve().parents[1]


def entrypoint(stage_flow) -> str:
    """module:attribute of a flow object (the attribute of its module that holds it). A module path, not a
    file: Prefect loads a file's entrypoint with the file's folder first on sys.path, where flows/profile.py
    hides the standard library's profile (which torch imports)."""
    module = importlib.import_module(stage_flow.fn.__module__)
    (attr,) = [name for name, value in vars(module).items() if value is stage_flow]
    return f"{module.__name__}:{attr}"


def deployment_problems(prefect_yaml: dict) -> list[str]:
    """What is wrong between CHAIN/DEPLOYMENTS and a prefect.yaml: a stage without a deployment, or one
    whose deployment has another entrypoint."""
    entrypoints = {d["name"]: d.get("entrypoint") for d in prefect_yaml.get("deployments") or []}
    problems = []
    for stage, stage_flow in CHAIN.items():
        name = DEPLOYMENTS.get(stage)
        if name is None:
            problems.append(f"{stage}: not in DEPLOYMENTS")
        elif name not in entrypoints:
            problems.append(f"{stage}: no deployment {name!r} in prefect.yaml")
        elif entrypoints[name] != entrypoint(stage_flow):
            problems.append(f"{stage}: deployment {name!r} has entrypoint {entrypoints[name]!r}, "
                            f"not {entrypoint(stage_flow)!r}")
    return problems


def test_every_chain_stage_has_its_deployment_in_prefect_yaml():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert deployment_problems(spec) == []
    assert set(DEPLOYMENTS) == set(CHAIN)
    assert deployment_name("train_coarse") == "train-coarse/train-coarse"
    assert deployment_name("select") == "select/select"


def test_a_missing_or_wrong_deployment_is_named():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    spec["deployments"] = [d for d in spec["deployments"] if d["name"] != "pretrain-coco"]
    for d in spec["deployments"]:
        if d["name"] == "benchmark":
            d["entrypoint"] = "flows.report:report_flow"
    assert deployment_problems(spec) == [
        "pretrain_coco: no deployment 'pretrain-coco' in prefect.yaml",
        "benchmark: deployment 'benchmark' has entrypoint 'flows.report:report_flow', "
        "not 'flows.benchmark:benchmark_flow'"]


def test_a_stage_outside_the_chain_has_no_deployment_to_dispatch_to():
    with pytest.raises(ValueError, match="'report' is not a chain stage; the chain stages are: search, sample"):
        deployment_name("report")


def test_deploy_resolves_the_pull_step_from_the_environment(monkeypatch):
    from flows.deploy import _resolve

    pull = yaml.safe_load((ROOT / "prefect.yaml").read_text())["pull"]
    monkeypatch.setenv("SQUEEZENAS_REPO", "/srv/squeezenas")
    assert _resolve(pull, "prefect.yaml") == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "/srv/squeezenas"}}]
    monkeypatch.delenv("SQUEEZENAS_REPO")
    with pytest.raises(ValueError, match=r"prefect.yaml: \{\{ \$SQUEEZENAS_REPO \}\} needs the environment variable "
                                         "SQUEEZENAS_REPO"):
        _resolve(pull, "prefect.yaml")
