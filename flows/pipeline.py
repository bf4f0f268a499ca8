"""The parent flow: every stage's flow in pipeline order, for users who schedule on a Prefect work
pool without DVC. (With DVC, `squeezenas run` lets `dvc repro` decide which stages are stale.)"""
from __future__ import annotations

import os

from prefect import flow

from flows.benchmark import benchmark_flow
from flows.cost_tables import cost_tables_flow
from flows.data import data_flow
from flows.profile import profile_flow
from flows.sample import sample_flow, select_flow
from flows.search import search_flow
from flows.train import FLOWS as TRAIN_FLOWS
from nas_core.config import load_params
from tasks import tracking

STAGES = {
    "data": data_flow,
    "cost_tables": cost_tables_flow,
    "latency_table": profile_flow,
    "search": search_flow,
    "sample": sample_flow,
    "select": select_flow,
    **TRAIN_FLOWS,
    "benchmark": benchmark_flow,
}


@flow(name="squeezenas-pipeline")
def pipeline_flow(params_file: str = "params.yaml", overrides: tuple[str, ...] = (),
                  stages: tuple[str, ...] = ()) -> dict:
    """Run `stages` (default: all, in order) as subflows under one MLflow parent run."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; valid stages are: {', '.join(STAGES)}")
    params = load_params(params_file, overrides)
    parent = tracking.start_pipeline_run(params.tracking, {"squeezenas.runner": "prefect"})
    os.environ[tracking.PARENT_RUN_ENV] = parent
    results, ok, failure, error = {}, False, None, None
    try:
        for name, stage_flow in STAGES.items():
            if not stages or name in stages:
                print(f"[pipeline] stage {name}")
                failure = (name, "interrupted")
                results[name] = stage_flow(params_file, overrides)
        ok = True
    except BaseException as e:
        error = e
        if isinstance(e, Exception):
            failure = (failure[0] if failure else "?", str(e) or type(e).__name__)
        raise
    finally:
        os.environ.pop(tracking.PARENT_RUN_ENV, None)
        status, end_tags = tracking.end_status(None if ok else error)
        tracking.end_pipeline_run(params.tracking, parent, {}, ok, failure, status=status, tags=end_tags)
    return {"parent_run_id": parent, "stages": list(results)}
