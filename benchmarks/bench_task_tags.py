"""What a stage's host/pid tags cost its task runs (issue 14: the orchestration share of `make run`).

A Prefect task run whose context holds tags asks the API for those tags' concurrency slots before it
starts. `cli.server.stage_api` tags each stage command's flow run (for the next command's orphan check);
`tasks.flowruns.untagged_task_runs` keeps the tags on the flow run and off its task runs. This times one
flow of N trivial tasks under the command's tags, the old way (task runs inherit the tags) and the new
way (the flow decorated), interleaved over R repeats against one Prefect test server, and prints the
time per task run of each and their ratio.

    source scripts/env.sh && .venv/bin/python benchmarks/bench_task_tags.py --tasks 30 --repeats 5
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

from prefect import flow, tags, task
from prefect.testing.utilities import prefect_test_harness

from tasks.flowruns import untagged_task_runs

MARKS = ("squeezenas.host:bench", "squeezenas.pid:1")


@task
def step(i: int) -> int:
    return i


@flow(name="bench-inherited-tags")
def inherited(n: int) -> None:
    for i in range(n):
        step(i)


@flow(name="bench-untagged-task-runs")
@untagged_task_runs
def untagged(n: int) -> None:
    for i in range(n):
        step(i)


def per_task_ms(fn, n: int) -> float:
    t0 = time.perf_counter()
    with tags(*MARKS):
        fn(n)
    return (time.perf_counter() - t0) / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    with prefect_test_harness(server_startup_timeout=180):
        inherited(2), untagged(2)  # warm: the flows and the task registered, the server's first queries
        times: dict[str, list[float]] = {"inherited": [], "untagged": []}
        for _ in range(a.repeats):
            for name, fn in (("inherited", inherited), ("untagged", untagged)):
                times[name].append(per_task_ms(fn, a.tasks))
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"tasks": a.tasks, "repeats": a.repeats, "ms_per_task_run": med,
           "ratio_untagged_over_inherited": med["untagged"] / med["inherited"],
           "saved_ms_per_task_run": med["inherited"] - med["untagged"]}
    print(f"per task run (median of {a.repeats}): tags inherited {med['inherited']:.1f} ms, task runs untagged "
          f"{med['untagged']:.1f} ms: ratio {out['ratio_untagged_over_inherited']:.2f} "
          f"({out['saved_ms_per_task_run']:.1f} ms saved per task run)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
