"""The parent flow, for users who schedule on a Prefect work pool without DVC (with DVC, `squeezenas
run` lets `dvc repro` decide which stages are stale): the shared stages once, then every experiment's
chain, independent chains side by side up to `pipeline.concurrency`, then the report.
A latency experiment's select waits for the select of the experiment its choice refers to.

`pipeline.dispatch` says where a chain stage runs: `subflows` (default) as a subflow in this flow's
process; `deployments` as its own flow run of its deployment in prefect.yaml (DEPLOYMENTS), which a
worker of that deployment's work pool picks up (on a cluster: each experiment's search and training on
a machine of the pool), linked to this flow run as a subflow and nested under this execution's MLflow
parent run. This flow waits for each, so up to `pipeline.concurrency` chains' flow runs are in flight
on the pool at once. The shared stages and the report run once and stay in this flow's process."""
from __future__ import annotations

import contextvars
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from prefect import flow

from flows.benchmark import benchmark_flow
from flows.cost_tables import cost_tables_flow
from flows.data import data_flow
from flows.profile import profile_flow
from flows.report import report_flow
from flows.sample import sample_flow, select_flow
from flows.search import search_flow
from flows.train import FLOWS as TRAIN_FLOWS
from nas_core.config import load_params
from tasks import tracking

SHARED = {"data": data_flow, "cost_tables": cost_tables_flow, "latency_table": profile_flow}
CHAIN = {"search": search_flow, "sample": sample_flow, "select": select_flow, **TRAIN_FLOWS,
         "benchmark": benchmark_flow}  # one per experiment (dvc.yaml's foreach groups)
FINAL = {"report": report_flow}
PIPELINE_STAGES = {**SHARED, **CHAIN, **FINAL}  # dvc.yaml's stages and stage groups, in its order
# pipeline.dispatch=deployments: each chain stage's deployment in prefect.yaml (the stage's name with hyphens),
# run as "<flow name>/<deployment>"
DEPLOYMENTS = {stage: stage.replace("_", "-") for stage in CHAIN}
POLL_S = 2.0  # how often a dispatched stage's flow run is checked for its end


def deployment_name(stage: str) -> str:
    """The deployment a chain stage runs as with pipeline.dispatch=deployments: "<flow name>/<deployment>"."""
    if stage not in CHAIN:
        raise ValueError(f"{stage!r} is not a chain stage; the chain stages are: {', '.join(CHAIN)}")
    return f"{CHAIN[stage].name}/{DEPLOYMENTS[stage]}"


def missing_deployments(stages: list[str] | tuple[str, ...]) -> list[str]:
    """The deployments of `stages` that the Prefect server has not got (`python -m flows.deploy` makes them)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    missing = []
    with get_client(sync_client=True) as client:
        for stage in stages:
            try:
                client.read_deployment_by_name(deployment_name(stage))
            except ObjectNotFound:
                missing.append(deployment_name(stage))
    return missing


# run_deployment numbers the task run it makes in the parent flow run unguarded: one chain creates at a time
_CREATE = threading.Lock()


def run_stage_deployment(stage: str, experiment: str, params_file: str, overrides: tuple[str, ...],
                         parent_run: str | None) -> str:
    """Run chain stage `stage` of `experiment` as a flow run of its deployment (linked to the current flow
    run as a subflow; its MLflow run under `parent_run`), wait for its end, and return the flow run's id.
    Any end but Completed raises, naming the stage, the experiment, the flow run and its state."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    target = deployment_name(stage)
    parameters = {"params_file": params_file, "overrides": list(overrides), "experiment": experiment}
    env = {tracking.PARENT_RUN_ENV: parent_run} if parent_run else {}
    with _CREATE:
        try:
            run = run_deployment(name=target, parameters=parameters, as_subflow=True, timeout=0,
                                 flow_run_name=f"{stage}@{experiment}", job_variables={"env": env} if env else None)
        except ObjectNotFound:
            raise RuntimeError(f"stage {stage}@{experiment}: no deployment {target!r} on the Prefect server "
                               "(create them: SQUEEZENAS_REPO=$PWD python -m flows.deploy)") from None
    with get_client(sync_client=True) as client:
        while not (run.state and run.state.is_final()):
            time.sleep(POLL_S)
            run = client.read_flow_run(run.id)
    if not run.state.is_completed():
        raise RuntimeError(f"stage {stage}@{experiment}: flow run {run.name!r} ({run.id}) of deployment {target!r} "
                           f"ended {run.state.name}: {run.state.message or 'no message'}")
    return str(run.id)


def chain_order(experiments: dict) -> list[str]:
    """The experiments with each one after the experiment its choice refers to (so that a pool of any
    size never waits on a chain it has not started)."""
    order: list[str] = []

    def visit(name: str) -> None:
        ref = experiments[name].choice.reference
        if ref in experiments and ref not in order:
            visit(ref)
        if name not in order:
            order.append(name)
    for name in experiments:
        visit(name)
    return order


class _Chains:
    """Runs experiment chains; `selected[name]` is set once name's choice is written (or its chain failed)."""

    def __init__(self, params, params_file: str, overrides: tuple[str, ...], stages: tuple[str, ...],
                 parent_run: str | None = None):
        self.params, self.params_file, self.overrides, self.stages = params, params_file, overrides, stages
        self.parent_run = parent_run
        self.selected = {name: threading.Event() for name in params.experiments}
        self.failed: set[str] = set()

    def run(self, name: str) -> list[str]:
        done = []
        try:
            for stage, stage_flow in CHAIN.items():
                if self.stages and stage not in self.stages:
                    continue
                if stage == "select":
                    self._wait_for_reference(name)
                print(f"[pipeline] stage {stage}@{name}")
                if self.params.pipeline.dispatch == "deployments":
                    run_stage_deployment(stage, name, self.params_file, self.overrides, self.parent_run)
                else:
                    stage_flow(self.params_file, self.overrides, experiment=name)
                done.append(f"{stage}@{name}")
                if stage == "select":
                    self.selected[name].set()
        except BaseException:
            self.failed.add(name)
            raise
        finally:
            self.selected[name].set()  # a dependent chain never waits on a failed one
        return done

    def _wait_for_reference(self, name: str) -> None:
        ref = self.params.experiments[name].choice.reference
        if ref in self.selected:
            self.selected[ref].wait()
            if ref in self.failed:
                raise RuntimeError(f"experiment {name}: its choice refers to {ref}, whose chain failed")


@flow(name="squeezenas-pipeline")
def pipeline_flow(params_file: str = "params.yaml", overrides: tuple[str, ...] = (),
                  stages: tuple[str, ...] = (), concurrency: int | None = None) -> dict:
    """Run `stages` (default: all) under one MLflow parent run: the shared ones, each experiment's chain
    (at most `concurrency` at a time; default pipeline.concurrency; its stages as subflows or as flow runs
    of their deployments: pipeline.dispatch), the report."""
    unknown = [s for s in stages if s not in PIPELINE_STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; valid stages are: {', '.join(PIPELINE_STAGES)}")
    params = load_params(params_file, overrides)
    limit = concurrency or params.pipeline.concurrency
    if params.pipeline.dispatch == "deployments":  # before anything runs
        missing = missing_deployments([s for s in CHAIN if not stages or s in stages] if params.experiments else [])
        if missing:
            raise RuntimeError(f"pipeline.dispatch is 'deployments' but the Prefect server has no deployment "
                               f"{', '.join(repr(m) for m in missing)} "
                               "(create them: SQUEEZENAS_REPO=$PWD python -m flows.deploy)")
    parent = tracking.start_pipeline_run(params.tracking, {"squeezenas.runner": "prefect"})
    os.environ[tracking.PARENT_RUN_ENV] = parent
    results, ok, failure, error = [], False, None, None
    try:
        def run_group(group: dict) -> None:  # the stages run once (not per experiment), in order
            nonlocal failure
            for name, stage_flow in group.items():
                if not stages or name in stages:
                    print(f"[pipeline] stage {name}")
                    failure = (name, "interrupted")
                    stage_flow(params_file, overrides)
                    results.append(name)

        run_group(SHARED)
        failure = ("experiment chains", "interrupted")
        chains = _Chains(params, params_file, overrides, stages, parent)
        with ThreadPoolExecutor(max_workers=limit, thread_name_prefix="chain") as pool:
            # each chain in a copy of this context: its flows are subflows of this one
            futures = {name: pool.submit(contextvars.copy_context().run, chains.run, name)
                       for name in chain_order(params.experiments)}
            errors = {}
            for name, future in futures.items():
                try:
                    results += future.result()
                except Exception as e:
                    errors[name] = e
        if errors:
            name, e = next(iter(errors.items()))
            failure = (f"chain {name}", str(e) or type(e).__name__)
            raise e
        run_group(FINAL)
        ok = True
    except BaseException as e:
        error = e
        if isinstance(e, Exception) and failure and failure[1] == "interrupted":
            failure = (failure[0], str(e) or type(e).__name__)
        raise
    finally:
        os.environ.pop(tracking.PARENT_RUN_ENV, None)
        status, end_tags = tracking.end_status(None if ok else error)
        tracking.end_pipeline_run(params.tracking, parent, {}, ok, failure, status=status, tags=end_tags)
    return {"parent_run_id": parent, "stages": results}
