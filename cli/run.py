"""`squeezenas run`: the whole pipeline. DVC decides which stages are stale (`dvc repro`); each stage
runs as its Prefect flow against one Prefect server started for the run (unless PREFECT_API_URL is
set), and every stage's MLflow run nests under one parent run of this execution."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from cli import forkserver
from cli.server import ORPHANS_CHECKED_ENV, check_orphaned_flow_runs, prefect_server
from nas_core.config import load_params
from nas_core.io import atomic_write_json
from tasks import processes

# The run's fork server runs each stage command as STAGE_ENTRY(argv) in a child of a process that imported these
# once (torch._dynamo: torch's optimizers import it on their first step, ~1.6 s of every training stage).
STAGE_ENTRY = "cli.main:main"
STAGE_PRELOAD = (
    "torch", "torch._dynamo", "torch.onnx", "git", "numpy", "pandas", "pyarrow.parquet", "matplotlib.pyplot",
    "onnx", "onnxruntime",
    "prefect", "prefect.flow_engine", "prefect.task_engine", "prefect.client.orchestration",
    "mlflow", "mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store",
    "cli.main", "flows.data", "flows.cost_tables", "flows.profile", "flows.search", "flows.sample",
    "flows.train", "flows.benchmark",
)


@contextmanager
def warm_stages(env: dict[str, str], mlflow_uris: tuple[str, ...] = ()) -> Iterator[Callable[[], dict]]:
    """Launch the fork server the stage commands use (cli/forkserver.py); it preloads while the
    caller goes on. Yields `ready()`: waits for it, puts its socket into `env` and returns a dict
    of its start-up seconds and, once the block ends, how many commands it served (empty if it did
    not start: stages then start cold). The server also opens the MLflow stores of `mlflow_uris`, once
    `ready()` is called: call it after the database exists (the parent run). SQUEEZENAS_FORKSERVER=off
    switches it off."""
    stats: dict = {}
    env.pop(forkserver.ENV, None)
    if os.environ.get(forkserver.ENV) == "off":
        yield lambda: stats
        return
    folder = Path(tempfile.mkdtemp(prefix="squeezenas-"))  # short: a unix socket path has ~100 bytes
    sock, gate, t0 = folder / "stages.sock", folder / "mlflow.ready", time.perf_counter()
    warm = {forkserver.WARM_ENV: json.dumps({"uris": list(mlflow_uris), "gate": str(gate)})} if mlflow_uris else {}
    proc = forkserver.launch(sock, {**env, **warm}, STAGE_ENTRY, STAGE_PRELOAD)

    def ready() -> dict:
        nonlocal proc
        gate.touch()
        if proc is not None and "startup_s" not in stats:
            if forkserver.wait_ready(proc, sock):
                stats["startup_s"] = time.perf_counter() - t0
                env[forkserver.ENV] = str(sock)
                print(f"[run] stage fork server ready ({stats['startup_s']:.1f} s): stages start warm", flush=True)
            else:
                proc = None
                print("[run] the stage fork server did not start; every stage starts its own process",
                      file=sys.stderr)
        return stats
    try:
        yield ready
    finally:
        if proc is not None:
            counts = forkserver.stop(proc, sock)
            stats.update({k: counts[k] for k in ("served", "refused", "commands_s") if k in counts})
        shutil.rmtree(folder, ignore_errors=True)


def task_compute_seconds(api_url: str, since: float) -> tuple[float, int]:
    """Wall time covered by Prefect task runs since `since` (the union of their intervals: parallel
    tasks count once), and how many there were. The stages' real work runs inside tasks; everything
    else (Prefect and process start-up, MLflow logging, DVC hashing) is orchestration."""
    from datetime import datetime, timezone

    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterStartTime
    from prefect.client.schemas.sorting import TaskRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    after = datetime.fromtimestamp(since, tz=timezone.utc)
    spans, offset = [], 0
    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        while True:
            page = client.read_task_runs(task_run_filter=TaskRunFilter(start_time=TaskRunFilterStartTime(after_=after)),
                                         sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=200, offset=offset)
            spans += [(r.start_time.timestamp(), r.end_time.timestamp()) for r in page if r.start_time and r.end_time]
            if len(page) < 200:
                break
            offset += 200
    covered, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > end:
            covered += b - max(a, end)
            end = b
    return covered, len(spans)


FAILED_STAGE = re.compile(r"failed to reproduce '([^']+)'")


def repro(cmd: list[str], env: dict[str, str], grace_s: float = 60.0) -> tuple[int, tuple[str, str] | None]:
    """Run `dvc repro` in its own session, its stderr passed through line by line. Returns the exit code
    and, when a stage failed, (stage, the last line its command printed before DVC's message) for the
    parent run's tags. Interrupted (Ctrl-C reaches only this process; SIGTERM), it passes SIGINT to
    dvc's group, which DVC leaves to the running stage, and waits `grace_s` for the stage to end its
    runs and dvc to exit."""
    proc = processes.spawn(cmd, first=signal.SIGINT, env=env, stderr=subprocess.PIPE, text=True,
                           errors="replace", bufsize=1)
    last, failure = "", None
    try:
        for line in proc.stderr:
            sys.stderr.write(line)
            found = FAILED_STAGE.search(line)
            if found and failure is None:
                failure = (found[1], last or line.strip())
            elif line.strip() and not line.startswith("ERROR:"):
                last = line.strip()
        return proc.wait(), failure
    finally:
        processes.stop(proc, grace_s, signal.SIGINT)  # at once if dvc is done


def run_pipeline(params_file: str = "params.yaml", targets: tuple[str, ...] = (), force: bool = False,
                 push: bool = False) -> int:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks import tracking  # MLflow: imported once the params are known to be good

    params = load_params(params_file)
    t0 = time.perf_counter()
    with prefect_server(Path(".prefect")) as (api_url, prefect_ready):
        env = dict(os.environ, PREFECT_API_URL=api_url)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        # DVC with dvc.lock parsed by libyaml (cli/dvc_repro.py): the same lock, less of DVC's time per stage
        cmd = [sys.executable, "-m", "cli.dvc_repro", "repro", *(["--force"] if force else []), *targets]
        # the Prefect server, the fork server's imports and the MLflow parent run start side by side
        with warm_stages(env, (tracking.tracking_uri(params.tracking.mlflow_uri),)) as ready:
            parent = tracking.start_pipeline_run(params.tracking, {"squeezenas.targets": ",".join(targets) or "all"})
            print(f"[run] MLflow parent run {parent} in {params.tracking.mlflow_uri}")
            env[tracking.PARENT_RUN_ENV] = parent
            prefect_startup = prefect_ready()
            print(f"[run] Prefect API {api_url} (start-up {prefect_startup:.1f} s)")
            with temporary_settings({PREFECT_API_URL: api_url}):  # once for every stage of this run
                check_orphaned_flow_runs()
            env[ORPHANS_CHECKED_ENV] = api_url
            warm = ready()
            print(f"[run] {' '.join(cmd)}", flush=True)
            t_repro, wall_start = time.perf_counter(), time.time()
            try:
                code, failure = repro(cmd, env)
            except BaseException as e:  # interrupted: the stages have ended; say so before the servers stop
                status, tags = tracking.end_status(e)
                tracking.end_pipeline_run(params.tracking, parent, {}, False, None, status=status, tags=tags)
                raise
            repro_s = time.perf_counter() - t_repro
        compute_s, n_tasks = task_compute_seconds(api_url, wall_start)
        total = time.perf_counter() - t0
        timing = {"wall_s": total, "repro_s": repro_s, "prefect_startup_s": prefect_startup,
                  **{f"forkserver_{k}": v for k, v in warm.items()},
                  "task_compute_s": compute_s, "orchestration_s": total - compute_s,
                  "orchestration_share": (total - compute_s) / total, "task_runs": n_tasks}
        if "commands_s" in warm and warm.get("refused") == 0:  # where the orchestration time went
            timing["dvc_between_stages_s"] = repro_s - warm["commands_s"]
            timing["stages_outside_tasks_s"] = warm["commands_s"] - compute_s  # flow runs, MLflow, params
            timing["run_startup_s"] = t_repro - t0  # Prefect server, MLflow parent run, fork server
        tracking.end_pipeline_run(params.tracking, parent, timing, code == 0, failure)
        atomic_write_json(Path(params.paths.metrics) / "pipeline_timing.json", timing)
    if code != 0:
        print(f"[run] dvc repro failed with exit code {code}; finished stages are kept, a rerun redoes only the rest",
              file=sys.stderr)
        return code
    if push:  # share datasets, measured latency tables and checkpoints with teammates (`dvc pull`)
        code = subprocess.call(["dvc", "push"], env=env)
        if code != 0:
            print("[run] dvc push failed; the results are complete locally", file=sys.stderr)
    paths = params.paths
    print(f"\n[run] done in {total / 60:.1f} min: {compute_s / 60:.1f} min in {n_tasks} task runs, "
          f"{100 * timing['orchestration_share']:.0f}% orchestration (Prefect/process start-up, MLflow, DVC)")
    if "dvc_between_stages_s" in timing:
        print(f"      orchestration: {timing['run_startup_s']:.0f} s start-up (Prefect server, MLflow parent run, "
              f"fork server), {timing['dvc_between_stages_s']:.0f} s DVC between stages, "
              f"{timing['stages_outside_tasks_s']:.0f} s in stages outside their tasks (flow runs, MLflow logging); "
              f"{timing['forkserver_served']} stages started warm")
    print(f"  Table 1:    {paths.report}/table1.md   (and table1.json; per experiment: "
          f"{paths.benchmark}/NAME/report.md)")
    print(f"  figures:    {paths.report}/figure5_macs_vs_miou.png, {paths.report}/figure6_latency_vs_miou.png")
    print("  plots:      dvc plots show   (writes dvc_plots/index.html)")
    print("  metrics:    dvc metrics show")
    print(f"  MLflow UI:  mlflow ui --backend-store-uri {params.tracking.mlflow_uri}   (then open "
          f"{runs_url(params.tracking)})")
    models = [params.for_experiment(name).tracking.registered_model for name in params.experiments]
    print(f"  lineage:    squeezenas lineage {models[0] if models else params.tracking.registered_model}"
          + (f"   (one registered model per experiment: {', '.join(models)})" if len(models) > 1 else ""))
    return 0


def runs_url(tracking_cfg, base: str = "http://127.0.0.1:5000") -> str:
    """The experiment's runs table: MLflow 3's UI opens in its GenAI view, where stage runs are not listed."""
    from tasks import tracking

    return f"{base}/#/experiments/{tracking.experiment_id(tracking_cfg)}/runs"


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="the whole pipeline: dvc repro with one Prefect server and a parent MLflow run")
    p.add_argument("targets", nargs="*", help="DVC stages to reproduce (default: all)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--force", action="store_true", help="rerun stages even if DVC finds them up to date")
    p.add_argument("--push", action="store_true", help="dvc push the results to the configured DVC remote")
    p.set_defaults(func=lambda a: run_pipeline(a.params, tuple(a.targets), a.force, a.push))
