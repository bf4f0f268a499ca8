"""Search across machines (issue 17), with two "nodes" on this machine: two processes of the same `squeezenas
search` command, nnodes 2, nproc 1, a c10d rendezvous on 127.0.0.1 and gloo. Each node has its own Prefect
home (its own server, as on separate machines); both share the project folder (the shared storage)."""
from __future__ import annotations

import hashlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from nas_core.config import ParamsError, load_params
from nas_core.cost.macs import build_cost_table, write_cost_table
from nas_core.data import generate_cityscapes
from nas_core.space.candidates import NUM_CANDIDATES
from tasks.torchrun import Nodes, launch_options
from tests.launch import launch
from tests.repo_copy import ROOT, stage_env

EXPERIMENT = {"space": "small", "objective": "macs", "cost_table": "costs/macs_small.parquet",
              "choice": {"rule": "nearest_cost", "metric": "macs", "reference": "squeezenas_mac_small"}}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    import yaml

    root = tmp_path_factory.mktemp("multinode")
    generate_cityscapes(root / "cityscapes", num_train=8, num_val=2, num_extra=0, size=(64, 128), seed=0)
    write_cost_table(build_cost_table("small"), root / "costs" / "macs_small.parquet")
    params = {
        # absolute: MLflow caches its store per URI, and another test may have used the same relative one
        "tracking": {"mlflow_uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "t"},
        "paths": {"dataset": "cityscapes", "cost_tables": "costs", "experiments": "out"},
        "cost_tables": {"spaces": ["small"]}, "latency": {"spaces": ["small"], "fidelity": {"num_networks": 0}},
        "search": {"epochs": 2, "patch": {"height": 64, "width": 128}, "batch_size": 1, "theta_lr": 0.2,
                   "threads": 1, "log_every": 1, "device": "cpu", "eval_images": 1, "checkpoint_every": 1},
        # two experiments: the call without --experiment searches the first
        "experiments": {"mac_small": {**EXPERIMENT, "alpha": 1.0}, "mac_small_b": {**EXPERIMENT, "alpha": 0.1}}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def node_env(root: Path, node: str) -> dict[str, str]:
    env = stage_env(PYTHONPATH=str(ROOT), PREFECT_HOME=str(root / f"prefect_{node}"))
    env.pop("PREFECT_API_URL", None)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    """Whether a process of this machine listens on `port` (read from /proc: no connection to the store)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        if any(int(r.split()[1].rsplit(":", 1)[1], 16) == port and r.split()[3] == "0A" for r in rows):
            return True
    return False


def search_command(port: int, *extra: str) -> list[str]:
    """The call every node runs (issue 17), as `squeezenas search ...`."""
    return [sys.executable, "-m", "cli.main", "search", "--set", "search.nnodes=2", "--set", "search.nproc=1",
            "--set", f"search.rdzv_endpoint=127.0.0.1:{port}", *extra]


def start_two_nodes(root: Path, port: int, *extra: str) -> tuple[subprocess.Popen, subprocess.Popen]:
    """Node A, then node B once A's torchrun hosts the rendezvous store (so A is the store's node)."""
    a = launch(search_command(port, *extra), root, node_env(root, "a"), stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while not listening(port):
        assert a.poll() is None, a.communicate()[0][-3000:]
        assert time.time() < deadline, "node A's torchrun did not start the rendezvous"
        time.sleep(0.2)
    return a, launch(search_command(port, *extra), root, node_env(root, "b"), stderr=subprocess.STDOUT)


def finish(*procs: subprocess.Popen, timeout: float = 600) -> list[str]:
    outs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, f"a node failed ({proc.returncode}):\n{out[-5000:]}"
        outs.append(out)
    return outs


def theta_sha256(out: Path) -> str:
    """sha256 of the written theta (float32 logits and live mask), as the workers digest theirs."""
    theta = pd.read_parquet(out / "theta.parquet").sort_values(["block"], kind="stable")
    blocks = theta["block"].nunique()
    logits = theta["logit"].to_numpy(np.float32).reshape(blocks, NUM_CANDIDATES)
    live = theta["live"].to_numpy(bool).reshape(blocks, NUM_CANDIDATES)
    return hashlib.sha256(logits.tobytes() + live.tobytes()).hexdigest()


def runs_of(root: Path, experiment: str) -> list:
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def check_one_search(root: Path, out: Path, outs: list[str], mlflow_experiment: str) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["nnodes"] == 2 and metrics["epochs"] == 2
    digests = metrics["theta_sha256_per_rank"]
    assert len(digests) == 2 and digests[0] == digests[1] == theta_sha256(out)  # theta identical on both ranks
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").rglob("*.pt"))
    assert not list(out.glob(".shared-*"))  # the storage check's probe is gone
    # one set of outputs, one MLflow run: written by the node whose worker held rank 0
    assert sum("rank 0 ran on another node" in o for o in outs) == 1, [o[-1500:] for o in outs]
    runs = runs_of(root, mlflow_experiment)
    assert len(runs) == 1 and runs[0].data.tags["squeezenas.stage"] == "search@mac_small"
    assert runs[0].data.metrics["world_size"] == 2 and runs[0].data.params["nnodes"] == "2"
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(runs[0].info.run_id, "ce")]
    assert steps == [1, 2]  # the per-epoch metrics replayed once
    return metrics


@pytest.mark.slow
def test_two_nodes_run_one_search_of_the_first_experiment(workdir):
    a, b = start_two_nodes(workdir, free_port(), "--set", "tracking.experiment=two_nodes")
    outs = finish(a, b)
    out = workdir / "out" / "mac_small" / "search"
    metrics = check_one_search(workdir, out, outs, "two_nodes")
    assert metrics["resumed_from"] is None
    assert not (workdir / "out" / "mac_small_b").exists()  # only the first experiment
    assert all("experiment mac_small, the first of params.yaml's" in o for o in outs)


@pytest.mark.slow
def test_a_node_killed_mid_epoch_comes_back_and_the_search_resumes(workdir):
    port = free_port()
    extra = ("--set", "tracking.experiment=killed", "--set", "paths.experiments=out_killed",
             "--set", "search.max_restarts=3")
    a, b = start_two_nodes(workdir, port, *extra)
    checkpoints = workdir / "out_killed" / "mac_small" / "search" / "checkpoints"
    deadline = time.time() + 300
    while not list(checkpoints.glob("*/last.pt")):  # a step done: the search is mid-epoch
        assert a.poll() is None and b.poll() is None, "a node ended before the kill"
        assert time.time() < deadline, "no checkpoint"
        time.sleep(0.05)
    b.send_signal(signal.SIGKILL)  # node B is lost (its reaper ends its torchrun, its worker dies with it)
    b.communicate(timeout=120)
    assert a.poll() is None  # node A waits at the rendezvous for a node to come back (max_restarts)
    b = launch(search_command(port, *extra), workdir, node_env(workdir, "b"), stderr=subprocess.STDOUT)
    outs = finish(a, b)
    out = workdir / "out_killed" / "mac_small" / "search"
    metrics = check_one_search(workdir, out, outs, "killed")
    assert metrics["resumed_from"] is not None, metrics  # from the checkpoint, not from the start
    assert sum("[search] resuming from" in o for o in outs) == 1


@pytest.mark.slow
def test_a_node_without_the_shared_output_folder_fails_naming_it(workdir, tmp_path):
    """Node B runs in a folder of its own holding the same params and data but not the output folder: the
    workers find that out when they meet, and both nodes fail at the start naming paths.search."""
    other = tmp_path / "node_b"
    other.mkdir()
    for name in ("params.yaml",):
        shutil.copy(workdir / name, other / name)
    for name in ("cityscapes", "costs"):
        (other / name).symlink_to(workdir / name)
    port = free_port()
    extra = ("--set", "paths.experiments=out_unshared", "--set", "tracking.experiment=unshared")
    a = launch(search_command(port, *extra), workdir, node_env(workdir, "a"))
    deadline = time.time() + 300
    while not listening(port):
        assert a.poll() is None and time.time() < deadline
        time.sleep(0.2)
    b = launch(search_command(port, *extra), other, node_env(workdir, "b"))
    for proc in (a, b):
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 2, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith("squeezenas search: error: paths.search: out_unshared/mac_small/search: not the "
                               "folder rank 0 writes"), err[-3000:]
        assert "shared storage" in last
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    assert mlflow.get_experiment_by_name("unshared") is None  # no MLflow run began


def test_a_node_that_cannot_see_the_dataset_fails_before_anything_starts(workdir):
    proc = subprocess.run(search_command(1, "--set", "paths.dataset=nowhere/cityscapes"), cwd=workdir,
                          env=node_env(workdir, "a"), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "squeezenas search: error: paths.dataset: nowhere/cityscapes: not found on this node; with search.nnodes 2 "
        "every node reads it from storage shared by all nodes")


@pytest.mark.parametrize("overrides, message", [
    (["search.nnodes=2"], r"search.rdzv_endpoint: nnodes 2 needs a c10d rendezvous endpoint host:port"),
    (["train.nnodes=3"], r"train.rdzv_endpoint: nnodes 3 needs a c10d rendezvous endpoint host:port"),
    (["search.nnodes=2", "search.rdzv_endpoint=node1"], r"search.rdzv_endpoint: expected host:port .*'node1'"),
    (["train.rdzv_endpoint=node1:99999"], r"train.rdzv_endpoint: expected host:port"),
    (["search.max_restarts=-1"], r"search.max_restarts"),
    (["search.nnodes=0"], r"search.nnodes"),
])
def test_bad_multinode_params_name_the_field(workdir, overrides, message):
    with pytest.raises(ParamsError, match=message):
        load_params(workdir / "params.yaml", overrides)


def test_torchrun_runs_standalone_on_one_node_and_c10d_across_nodes():
    assert launch_options(2, Nodes()) == ["--standalone", "--nproc_per_node=2"]
    assert launch_options(1, Nodes(2, "node1:29400", 3, "search-out")) == [
        "--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d", "--rdzv-endpoint=node1:29400",
        "--rdzv-id=search-out", "--max-restarts=3"]
    params = load_params(ROOT / "params.yaml", ["search.nnodes=4", "search.rdzv_endpoint=node1:29400"])
    assert Nodes.of(params.search, "search-outputs/x").job == "search-outputs_x"
