"""Ctrl-C, SIGTERM and kill -9 of real stage commands (issue 12): the command stops promptly with exit
128+N and one line saying how to resume, no process it started outlives it, its MLflow and Prefect
runs end (KILLED / Crashed), and no temporary folder is left behind."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from nas_core.config import load_params
from nas_core.cost.macs import build_cost_table, write_cost_table
from nas_core.data import generate_cityscapes
from tasks import tracking
from tests.launch import launch
from tests.repo_copy import ROOT, make_repo_copy, stage_env

BIG_DATA = ["--set", "data.cityscapes_train=2000"]  # minutes of generation: the signal lands mid-task


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    return kids


def descendants(pid: int) -> list[tuple[int, str]]:
    """Every process below `pid`, as (pid, start time) so a reused pid is not taken for it."""
    kids, out, todo = _children(), [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append((child, _start_time(child)))
            todo.append(child)
    return out


def _start_time(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError):
        return ""


def still_running(procs: list[tuple[int, str]], within_s: float = 30.0) -> list[int]:
    """Those of `procs` still alive (zombies count as gone) after waiting up to `within_s`."""
    deadline = time.time() + within_s
    while True:
        alive = [pid for pid, started in procs if _start_time(pid) == started and _state(pid) not in ("Z", "")]
        if not alive or time.time() > deadline:
            return alive
        time.sleep(0.2)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def wait_for(condition, proc: subprocess.Popen, timeout_s: float = 600.0) -> None:
    deadline = time.time() + timeout_s
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the command ended ({proc.returncode}) before the signal:\n"
                                 f"{out[-3000:]}\n{err[-3000:]}")
        assert time.time() < deadline, "the command did not get under way"
        time.sleep(0.1)


def interrupt(proc: subprocess.Popen, signum: int) -> tuple[int, str, float, list[tuple[int, str]]]:
    """Send `signum` (SIGINT to the group, as a terminal does; others to the command); return the exit
    status, stderr, seconds to exit and the processes the command had started."""
    started = descendants(proc.pid)
    t0 = time.time()
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err, time.time() - t0, started


def flow_run_states(prefect_home: Path) -> dict[str, str]:
    with sqlite3.connect(prefect_home / "prefect.db") as db:
        return dict(db.execute("select flow.name, flow_run.state_type from flow_run join flow "
                               "on flow_run.flow_id = flow.id").fetchall())


def flow_states(prefect_home: Path, flow: str) -> list[str]:
    """The state of every flow run of `flow`, oldest first."""
    with sqlite3.connect(prefect_home / "prefect.db") as db:
        return [s for (s,) in db.execute("select flow_run.state_type from flow_run join flow on flow_run.flow_id = "
                                         "flow.id where flow.name = ? order by flow_run.created", (flow,))]


@pytest.fixture
def data_dir(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    return tmp_path


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = stage_env(PYTHONPATH=str(ROOT), PREFECT_HOME=str(tmp_path / "prefect_home"))
    env.pop("PREFECT_API_URL", None)
    return env


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_a_signalled_data_stage_stops_leaving_no_process_or_temporary(data_dir, how):
    signum = getattr(signal, how)
    env = cli_env(data_dir)
    proc = launch([sys.executable, "-m", "cli.main", "data", *BIG_DATA], data_dir, env)
    wait_for(lambda: any((data_dir / "data").glob(".cityscapes.*")), proc)
    code, err, seconds, started = interrupt(proc, signum)

    assert len(started) >= 2, started  # its own Prefect server and its reaper
    assert not still_running(started), "processes outlived the command"
    leftovers = [p.name for p in (data_dir / "data").iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers
    if signum == signal.SIGKILL:
        assert code == -signal.SIGKILL
        return
    assert code == 128 + signum and seconds < 30, (code, seconds, err[-2000:])
    last = err.strip().splitlines()[-1]
    assert f"squeezenas data: interrupted ({how})" in last and "rerun the same command" in last, err[-2000:]
    assert "Traceback" not in err
    assert flow_run_states(data_dir / "prefect_home") == {"data": "CRASHED"}


def test_a_second_ctrl_c_while_stopping_ends_the_command_at_once_without_a_traceback(data_dir):
    env = cli_env(data_dir)
    proc = launch([sys.executable, "-m", "cli.main", "data", *BIG_DATA], data_dir, env)
    wait_for(lambda: any((data_dir / "data").glob(".cityscapes.*")), proc)
    started = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.3)  # the first one is being handled: runs marked, its Prefect server stopped
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)

    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("squeezenas data: interrupted again (SIGINT) while stopping: stopped now"), err[-2000:]
    assert "rerun the same command" in last
    assert not still_running(started), "processes outlived the command"  # the reaper ended them
    assert not [p.name for p in (data_dir / "data").iterdir() if p.name.startswith(".")]


SEARCH = ("search: {space: small, cost_table: costs/macs_small.parquet, alpha: 1.0, epochs: 200, patch: {height: 64, "
          "width: 128}, batch_size: 2, theta_lr: 0.2, threads: 1, log_every: 1, device: cpu, checkpoint_every: 1}\n")


@pytest.fixture(scope="module")
def search_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("search_signals")
    generate_cityscapes(root / "cityscapes", num_train=6, num_val=2, num_extra=0, size=(64, 128), seed=0)
    write_cost_table(build_cost_table("small"), root / "costs" / "macs_small.parquet")
    (root / "params.yaml").write_text(f"tracking: {{mlflow_uri: 'sqlite:///{root / 'mlflow.db'}', experiment: t}}\n"
                                      "paths: {dataset: cityscapes, search: out}\n" + SEARCH)
    return root


def search_runs(root: Path) -> list:
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["t"], output_format="list", order_by=["attributes.start_time ASC"])


@pytest.mark.slow
def test_ctrl_c_on_search_keeps_its_checkpoint_and_ends_its_runs_killed(search_dir):
    env = cli_env(search_dir)
    proc = launch([sys.executable, "-m", "cli.main", "search"], search_dir, env)
    wait_for(lambda: any((search_dir / "out").rglob("*.pt")), proc)
    code, err, seconds, started = interrupt(proc, signal.SIGINT)

    assert code == 130 and seconds < 30, (code, seconds, err[-2000:])
    assert "interrupted (SIGINT)" in err.strip().splitlines()[-1]
    assert not still_running(started)
    assert any((search_dir / "out").rglob("*.pt")), "the checkpoint was lost"
    run = search_runs(search_dir)[-1]
    assert run.info.status == "KILLED" and run.data.tags[tracking.KILLED_TAG] == "SIGINT"
    assert flow_run_states(search_dir / "prefect_home") == {"search": "CRASHED"}


@pytest.mark.slow
def test_after_a_kill_9_the_next_run_of_the_stage_marks_the_stale_run_killed(search_dir):
    env = cli_env(search_dir)
    before = len(search_runs(search_dir))
    proc = launch([sys.executable, "-m", "cli.main", "search", "--set", "paths.search=out9"], search_dir, env)
    wait_for(lambda: len(search_runs(search_dir)) > before, proc)
    code, _, _, started = interrupt(proc, signal.SIGKILL)
    assert code == -signal.SIGKILL and not still_running(started)
    stale = search_runs(search_dir)[-1]
    assert stale.info.status == "RUNNING"  # nothing could end it

    assert "RUNNING" in flow_states(search_dir / "prefect_home", "search")  # nor its Prefect flow run

    params = load_params(search_dir / "params.yaml")
    with tracking.stage_run(params.tracking, "search"):  # the next run of the stage
        pass
    runs = {r.info.run_id: r for r in search_runs(search_dir)}
    assert runs[stale.info.run_id].info.status == "KILLED"
    assert "gone" in runs[stale.info.run_id].data.tags[tracking.KILLED_TAG]
    # the next command on the machine, whichever stage, ends the dead command's flow run
    nxt = launch([sys.executable, "-m", "cli.main", "cost-tables", "--set", "cost_tables.spaces=[small]", "--set",
                  "paths.cost_tables=ct", "--set", "paths.networks=nets"], search_dir, env)
    _, err = nxt.communicate(timeout=300)
    assert nxt.returncode == 0, err[-2000:]
    assert "RUNNING" not in flow_states(search_dir / "prefect_home", "search")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_a_signalled_ddp_search_leaves_no_torchrun_or_worker_behind(search_dir, how):
    """nproc 2: torchrun (gloo) and its two workers, each in a session of its own, end with the command;
    after a kill -9 the reaper ends torchrun and the workers die with it."""
    signum = getattr(signal, how)
    out = search_dir / f"ddp_{how}"
    proc = launch([sys.executable, "-m", "cli.main", "search", "--set", "search.nproc=2", "--set",
                   f"paths.search={out.name}"], search_dir, cli_env(search_dir))
    wait_for(lambda: any(out.rglob("*.pt")), proc)  # the workers are past their first epoch
    cmdlines = [_cmdline(pid) for pid, _ in descendants(proc.pid)]
    code, err, seconds, started = interrupt(proc, signum)

    launchers = [c for c in cmdlines if "-m torch.distributed.run" in c]
    assert len(launchers) == 1 and len([c for c in cmdlines if "-m tasks.search" in c]) == 3, cmdlines  # + 2 workers
    assert not still_running(started, within_s=60), "torchrun or a worker outlived the command"
    if signum == signal.SIGKILL:
        assert code == -signal.SIGKILL
        return
    assert code == 130 and seconds < 60, (code, seconds, err[-2000:])
    assert "Traceback" not in err and "interrupted (SIGINT)" in err.strip().splitlines()[-1], err[-2000:]
    assert any(out.rglob("*.pt")), "the checkpoint was lost"


DASK_OWNER = """
import time
from types import SimpleNamespace
from flows.runners import make_task_runner
with make_task_runner(SimpleNamespace(runner="dask", dask_address=None, workers=2)) as runner:
    runner.client  # the cluster starts at the flow's first submit
    print("ready", flush=True)
    time.sleep(300)
"""


@pytest.mark.slow
def test_a_local_dask_cluster_s_workers_die_with_a_killed_command():
    """runner: dask starts worker processes (Dask's nannies) in the command's own process group, not
    under the reaper: Dask ends them when their parent is gone, which this checks with a real cluster."""
    owner = subprocess.Popen([sys.executable, "-c", DASK_OWNER], cwd=ROOT, env=stage_env(PYTHONPATH=str(ROOT)),
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert owner.stdout.readline() == "ready\n"
    started = descendants(owner.pid)
    assert len([p for p, _ in started if "spawn_main" in _cmdline(p)]) >= 2, [_cmdline(p) for p, _ in started]
    owner.kill()
    owner.wait()
    assert not still_running(started, within_s=60), "a Dask worker outlived its owner"


HELPER = """
import sys, time
from tasks import processes
helper = processes.spawn(["sh", "-c", "sleep 300 & sleep 300"])
processes.reaper().remove_at_exit(sys.argv[1])
print(helper.pid, flush=True)
if sys.stdin.readline() == "stop\\n":
    processes.stop(helper)
    print("stopped", flush=True)
time.sleep(300)
"""


@pytest.mark.parametrize("ending", ["kill -9 of the owner", "stop"])
def test_helpers_and_registered_folders_do_not_outlive_their_owner(tmp_path, ending):
    folder = tmp_path / ".half-written"
    (folder / "sub").mkdir(parents=True)
    owner = subprocess.Popen([sys.executable, "-c", HELPER, str(folder)], cwd=ROOT, env=stage_env(PYTHONPATH=str(ROOT)),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    helper_pid = int(owner.stdout.readline())
    while len([p for p, _ in descendants(helper_pid) if _cmdline(p).startswith("sleep")]) < 2:
        time.sleep(0.05)
    started = descendants(owner.pid)
    helpers = [p for p in started if p[0] == helper_pid or _cmdline(p[0]).startswith("sleep")]
    assert len(helpers) == 3 and len(started) == 4  # the shell, its two sleeps, the reaper
    if ending == "stop":  # the helper's whole group ends, the background sleep too; the owner goes on
        owner.stdin.write("stop\n")
        owner.stdin.flush()
        assert owner.stdout.readline() == "stopped\n"
        assert not still_running(helpers, within_s=0)
        assert folder.is_dir()
    owner.kill()
    owner.wait()
    assert not still_running(started), "a helper outlived its owner"
    assert not folder.exists()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def test_a_live_running_run_is_not_taken_for_stale(search_dir):
    params = load_params(search_dir / "params.yaml")
    with tracking.stage_run(params.tracking, "select") as run:  # this process: alive
        assert tracking.end_stale_runs(params.tracking, "select") == []
    assert mlflow.get_run(run.info.run_id).info.status == "FINISHED"


@pytest.fixture
def pipeline_repo(tmp_path):
    import yaml

    repo = make_repo_copy(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["cityscapes_train"] = 2000
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return repo


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_a_signalled_pipeline_run_leaves_no_process_behind(pipeline_repo, how):
    signum = getattr(signal, how)
    env = stage_env(PYTHONPATH=str(ROOT))
    env.pop("PREFECT_API_URL", None)
    proc = launch([sys.executable, "-m", "cli.main", "run", "data"], pipeline_repo, env)
    wait_for(lambda: any((pipeline_repo / "data").glob(".cityscapes.*")), proc)
    time.sleep(1)
    code, err, seconds, started = interrupt(proc, signum)

    assert not still_running(started, within_s=60), "processes outlived squeezenas run"
    assert not [p.name for p in (pipeline_repo / "data").iterdir() if p.name.startswith(".")]
    mlflow.set_tracking_uri(f"sqlite:///{pipeline_repo / 'mlflow.db'}")
    parent = mlflow.search_runs(experiment_names=["squeezenas"], output_format="list",
                                filter_string="tags.`squeezenas.stage` = 'pipeline'")[0]
    if signum == signal.SIGKILL:
        assert code == -signal.SIGKILL
        return
    assert code == 128 + signum and seconds < 60, (code, seconds, err[-3000:])
    assert f"squeezenas run: interrupted ({how})" in err.strip().splitlines()[-1], err[-3000:]
    assert parent.info.status == "KILLED" and parent.data.tags[tracking.KILLED_TAG] == how
    assert flow_run_states(pipeline_repo / ".prefect") == {"data": "CRASHED"}
