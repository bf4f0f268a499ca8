"""The search stage wired end to end: Prefect flow + MLflow run on generated data, the outputs the
sample stage reads, errors that name the file, and (slow) DVC and a killed CLI run that resumes."""
import json
import signal
import subprocess
import sys
import time

import mlflow
import numpy as np
import pandas as pd
import pytest

from nas_core.config import load_params
from nas_core.cost.macs import build_cost_table, write_cost_table
from nas_core.data import generate_cityscapes
from tasks.search import load_cost
from tests.launch import launch
from tests.repo_copy import ROOT, TINY_EXPERIMENTS, make_repo_copy, run, stage_env

SEARCH = ("search: {space: small, cost_table: costs/macs_small.parquet, alpha: 1.0, epochs: 2, patch: {height: 64, "
          "width: 128}, batch_size: 2, theta_lr: 0.2, threads: 1, log_every: 1, device: cpu}\n")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("search_stage")
    generate_cityscapes(root / "cityscapes", num_train=6, num_val=2, num_extra=0, size=(64, 128), seed=0)
    write_cost_table(build_cost_table("small"), root / "costs" / "macs_small.parquet")
    (root / "params.yaml").write_text(
        # absolute: MLflow caches its store per URI, and another test may have used the same relative one
        f"tracking: {{mlflow_uri: 'sqlite:///{root / 'mlflow.db'}', experiment: t}}\n"
        "paths: {dataset: cityscapes, search: out}\n" + SEARCH)
    return root


def test_flow_writes_the_outputs_and_one_mlflow_run_with_curves(workdir, monkeypatch, prefect_harness):
    from flows.search import search_flow
    from nas_core.select.sampling import load_supernet, read_probabilities

    monkeypatch.chdir(workdir)
    summary = search_flow("params.yaml")
    out = workdir / "out"
    assert summary["epochs"] == 2 and 0 <= summary["argmax_class_miou"] <= 1
    assert json.loads((out / "metrics.json").read_text())["architecture"] == summary["architecture"]
    theta = pd.read_parquet(out / "theta.parquet")
    assert set(theta["epoch"]) == {2} and len(theta) == 20 * 13
    np.testing.assert_allclose(theta.groupby("block")["probability"].sum(), 1.0, atol=1e-6)
    assert sorted(pd.read_parquet(out / "theta_history.parquet")["epoch"].unique()) == [0, 1, 2]
    curves = pd.read_csv(out / "search_curves.csv")
    assert list(curves["epoch"]) == [1, 2]
    assert list(pd.read_csv(out / "pruning_log.csv").columns) == ["epoch", "block", "candidate", "probability"]
    assert (out / "probabilities.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the next stage reads what this one writes
    supernet = load_supernet(out / "supernet.pt")
    np.testing.assert_allclose(read_probabilities(out / "theta.parquet", len(supernet.blocks)),
                               supernet.probabilities().detach().numpy(), atol=1e-6)

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["t"], output_format="list")
    assert len(runs) == 1 and runs[0].data.tags["squeezenas.stage"] == "search"
    assert runs[0].data.params["alpha"] == "1.0"
    client = mlflow.MlflowClient()
    for name in ("ce", "resource_loss", "total_loss", "tau", "expected_cost", "mean_entropy", "live_candidates",
                 "skip_share"):
        assert [m.step for m in client.get_metric_history(runs[0].info.run_id, name)] == [1, 2], name
    assert "final_argmax_class_miou" in runs[0].data.metrics
    arts = {a.path for a in client.list_artifacts(runs[0].info.run_id, "search")}
    assert {"search/probabilities.png", "search/theta_history.parquet", "search/pruning_log.csv"} <= arts


def test_a_cost_table_of_another_space_is_named_in_the_error(workdir):
    write_cost_table(build_cost_table("large"), workdir / "costs" / "macs_large.parquet")
    cfg = load_params(workdir / "params.yaml", ["search.cost_table=" + str(workdir / "costs/macs_large.parquet")])
    with pytest.raises(ValueError, match=r"macs_large.parquet: a table of the large space, but search.space is small"):
        load_cost(cfg.search)


def test_a_missing_cost_metric_is_named_with_the_file_and_field(workdir):
    cfg = load_params(workdir / "params.yaml", ["search.cost_table=" + str(workdir / "costs/macs_small.parquet"),
                                                "search.cost_metric=latency_ms"])
    with pytest.raises(ValueError, match=r"macs_small.parquet: .*'latency_ms'.*\(search.cost_metric\)"):
        load_cost(cfg.search)


def test_the_task_searches_with_the_fused_supernet_and_writes_the_plain_state(workdir, tmp_path, monkeypatch):
    from nas_core.search.supernet import build_supernet
    from nas_core.select.sampling import load_supernet
    from tasks.search import search

    monkeypatch.chdir(workdir)
    cfg = load_params("params.yaml", ["search.fused=true", "search.epochs=1", "search.eval_images=1"]).search
    assert cfg.fused is True
    summary = search(cfg, "cityscapes", str(tmp_path / "out"))
    assert summary["epochs"] == 1
    supernet = load_supernet(tmp_path / "out" / "supernet.pt")  # the sample stage reads it as a plain supernet
    plain = build_supernet("small")
    plain.set_live_mask(supernet.live_mask())
    assert list(supernet.state_dict()) == list(plain.state_dict())


@pytest.mark.parametrize("override, message", [
    ("search.prune_threshold=0.1", "search.prune_threshold"),
    ("search.warmup_epochs=2", "warmup_epochs \\(2\\) must be below epochs \\(2\\)"),
    ("search.scheme=darts", "search.scheme"),
    ("search.tau_schedule=cosine", "search.tau_schedule"),
    ("search.fused=fast", "search.fused"),
])
def test_bad_search_params_name_the_field(workdir, override, message):
    from nas_core.config import ParamsError

    with pytest.raises(ParamsError, match=message):
        load_params(workdir / "params.yaml", [override])


@pytest.mark.slow
def test_a_killed_cli_search_resumes_from_its_checkpoint(workdir, tmp_path):
    env = stage_env(PREFECT_SERVER_ALLOW_EPHEMERAL_MODE="true")
    args = [sys.executable, "-m", "cli.main", "search", "--set", "paths.search=" + str(tmp_path / "out"),
            "--set", "search.epochs=3", "--set", "search.checkpoint_every=1"]
    proc = launch(args, workdir, {**env, "PYTHONPATH": str(ROOT)}, stderr=subprocess.STDOUT)
    checkpoints = tmp_path / "out" / "checkpoints"
    deadline = time.time() + 300
    while not list(checkpoints.glob("*/last.pt")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(checkpoints.glob("*/last.pt")) and not (tmp_path / "out" / "metrics.json").exists()
    again = subprocess.run(args, cwd=workdir, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "[search] resuming from" in again.stdout
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["epochs"] == 3


@pytest.mark.slow
def test_dvc_repro_search_in_a_fresh_repository(tmp_path):
    repo = make_repo_copy(tmp_path / "repo")
    overrides = {"data": {"cityscapes_train": 4, "cityscapes_val": 2, "cityscapes_extra": 0, "coco_train": 1,
                          "coco_val": 1, "imagenet_train_per_class": 1, "imagenet_val_per_class": 1,
                          "cityscapes_size": {"height": 64, "width": 128}},
                 "cost_tables": {"spaces": ["small"]}}
    import yaml

    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in overrides.items():
        params[section].update(values)
    params["search"].update(epochs=1, batch_size=2, patch={"height": 64, "width": 128}, threads=1)
    params["experiments"] = {"mac_small": TINY_EXPERIMENTS["mac_small"]}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro", "search@mac_small"], repo)  # an experiment's search alone, with what it needs
    out = repo / "outputs" / "experiments" / "mac_small" / "search"
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 1
    assert (out / "supernet.pt").is_file() and "supernet.pt" in (repo / "dvc.lock").read_text()
    again = run(["dvc", "repro", "search@mac_small"], repo)
    assert "Running stage 'search@mac_small'" not in again.stdout
