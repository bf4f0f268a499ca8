"""The parent flow, for users who schedule on a Prefect work pool without DVC (with DVC, `squeezenas
run` lets `dvc repro` decide which stages are stale): the shared stages once, then every experiment's
chain as subflows, independent chains side by side up to `pipeline.concurrency`, then the report.
A latency experiment's select waits for the select of the experiment its choice refers to."""
from __future__ import annotations

import contextvars
import os
import threading
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
STAGES = {**SHARED, **CHAIN, **FINAL}  # dvc.yaml's stages and stage groups, in its order


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

    def __init__(self, params, params_file: str, overrides: tuple[str, ...], stages: tuple[str, ...]):
        self.params, self.params_file, self.overrides, self.stages = params, params_file, overrides, stages
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
    (at most `concurrency` at a time; default pipeline.concurrency), the report."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; valid stages are: {', '.join(STAGES)}")
    params = load_params(params_file, overrides)
    limit = concurrency or params.pipeline.concurrency
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
        chains = _Chains(params, params_file, overrides, stages)
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
