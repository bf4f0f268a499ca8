"""End to end (slow): `squeezenas sample` killed mid-run and rerun, and the two stages under `dvc repro`
in a fresh repository."""
import json
import os
import signal
import subprocess
import time

import pytest
import yaml

from nas_core.cost.macs import build_cost_table, write_cost_table
from nas_core.data import generate_cityscapes
from nas_core.space.spaces import Architecture
from tests.repo_copy import TINY_EXPERIMENTS, make_repo_copy, run, stage_env
from tests.test_sampling_fixtures import IMAGE_SIZE, searched_supernet, write_search_outputs

pytestmark = pytest.mark.slow


def lay_out_inputs(root, num_val=3):
    (root / "outputs" / "search").mkdir(parents=True, exist_ok=True)
    write_search_outputs(root / "outputs" / "search", searched_supernet())
    generate_cityscapes(root / "data" / "cityscapes", 2, num_val, 0, IMAGE_SIZE, 0)
    write_cost_table(build_cost_table("small"), root / "outputs" / "cost_tables" / "macs_small.parquet")


def test_a_killed_sample_run_keeps_its_evaluations_and_the_rerun_does_the_rest(tmp_path):
    lay_out_inputs(tmp_path, num_val=6)
    (tmp_path / "params.yaml").write_text("sample: {num_samples: 16, workers: 1, threads_per_worker: 1, device: cpu}\n")
    log = tmp_path / "outputs" / "samples" / "partial_evaluations.jsonl"
    proc = subprocess.Popen(["squeezenas", "sample"], cwd=tmp_path, env=stage_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if log.is_file() and len(log.read_text().splitlines()) >= 3:
                break
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # as a crash or a preempted machine would
        proc.wait()
    kept = len(log.read_text().splitlines())  # every line whole: the log is replaced atomically
    assert 3 <= kept < 16, "the run finished before it could be killed; make the evaluations slower"
    assert not (tmp_path / "outputs" / "samples" / "samples.parquet").exists()
    out = run(["squeezenas", "sample"], tmp_path).stdout
    assert f"evaluating {16 - kept} paths ({kept} already in" in out
    metrics = json.loads((tmp_path / "outputs" / "samples" / "sample_metrics.json").read_text())
    assert metrics["evaluated"] == 16 - kept and metrics["reused"] == kept and metrics["samples"] == 16


def test_dvc_repro_runs_sample_then_select_and_skips_them_when_nothing_changed(tmp_path):
    from flows.cost_tables import write_published_cards

    repo = make_repo_copy(tmp_path / "repo")
    lay_out_inputs(repo)
    exp = repo / "outputs" / "experiments" / "mac_small"
    exp.mkdir(parents=True)
    (repo / "outputs" / "search").rename(exp / "search")  # what search@mac_small writes
    write_published_cards(repo / "outputs" / "networks")  # what cost_tables writes
    (repo / "outputs" / "latency" / "tables").mkdir(parents=True)  # no latency table: MAC costs only
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["sample"].update(num_samples=5, workers=2, device="cpu")
    params["experiments"] = {"mac_small": TINY_EXPERIMENTS["mac_small"]}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro", "--single-item", "sample@mac_small"], repo)
    run(["dvc", "repro", "--single-item", "select@mac_small"], repo)
    samples = exp / "samples"
    arch = Architecture.load(samples / "chosen_architecture.json")
    assert arch.space == "small"
    assert {p.name for p in (samples / "plots").iterdir()} == {"pareto_macs.png", "pareto_params.png",
                                                                "architecture.png"}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert {"sample@mac_small", "select@mac_small"} <= set(lock)
    assert not any("choice" in key for key in lock["sample@mac_small"]["params"]["params.yaml"])  # never reruns it
    assert (repo / "outputs" / "networks" / "mac_small.json").read_text() == (samples / "chosen_architecture.json"
                                                                             ).read_text()
    again = run(["dvc", "repro", "--single-item", "select@mac_small"], repo)
    assert "didn't change, skipping" in again.stdout and "Running stage" not in again.stdout
    plots = json.loads(run(["dvc", "plots", "show", "--json"], repo).stdout)
    assert any("front_macs.csv" in key for key in json.dumps(plots).split('"'))

    params["experiments"]["mac_small"]["choice"]["rule"] = "best_under_budget"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run(["dvc", "status", "sample@mac_small", "select@mac_small"], repo).stdout
    assert "select@mac_small" in status and "sample@mac_small:" not in status
