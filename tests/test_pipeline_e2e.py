"""The whole pipeline on a tiny configuration in a fresh copy of the repository, with the paper's
experiment cut to one space (a MAC experiment and its latency twin): `squeezenas run` (dvc repro of
every stage), Table 1 and the figures, the latency choice under the MAC network's latency, lineage back
to the dataset hash, a no-op second repro, one experiment's alpha rerunning only its chain and the
report, and the MLflow UI's REST API."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request

import pytest
import yaml

from tests.repo_copy import TINY_EXPERIMENTS, make_repo_copy, run, stage_env, write_tiny_params

pytestmark = pytest.mark.slow

SHARED = {"data", "cost_tables", "latency_table"}
CHAIN = ("search", "sample", "select", "pretrain_imagenet", "pretrain_coco", "train_coarse", "train_fine", "benchmark")
ROW_KEYS = {"network", "kind", "space", "objective", "architecture", "weights", "class_miou", "latency_ms",
            "gmacs", "gmacs_per_s", "params_m"}


def chain(name: str) -> set[str]:
    return {f"{stage}@{name}" for stage in CHAIN}


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([a-z_@]+)'", output))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    repo = make_repo_copy(tmp_path_factory.mktemp("e2e") / "repo")
    write_tiny_params(repo)
    run(["git", "commit", "-qam", "tiny params"], repo)
    first = run(["squeezenas", "run"], repo, timeout=1800)
    return repo, first


def test_run_reproduces_the_shared_stages_each_chain_and_the_report(pipeline):
    repo, first = pipeline
    expected = SHARED | chain("mac_small") | chain("lat_small") | {"report"}
    assert stages_run(first.stdout) == expected
    assert "Table 1:" in first.stdout and "mlflow ui --backend-store-uri" in first.stdout
    # every stage ran warm in a child of the run's fork server (cli/forkserver.py), none fell back
    timing = json.loads((repo / "outputs" / "metrics" / "pipeline_timing.json").read_text())
    assert (timing["forkserver_served"], timing["forkserver_refused"]) == (len(expected), 0), timing
    assert "fork server refused" not in first.stderr


def test_table1_has_every_row_and_our_macs_are_describes(pipeline):
    repo, _ = pipeline
    table = json.loads((repo / "outputs" / "report" / "table1.json").read_text())
    rows = {r["network"]: r for r in table["rows"]}
    assert set(rows) == {"mac_small", "lat_small", "squeezenas_mac_small", "squeezenas_lat_small",
                         "squeezenas_mac_large", "squeezenas_lat_large", "squeezenas_mac_xlarge",
                         "squeezenas_lat_xlarge", "mobilenetv3_small", "mobilenetv3_large"}
    assert all(ROW_KEYS <= set(r) for r in rows.values())
    assert [rows[n]["kind"] for n in ("mac_small", "squeezenas_lat_small", "mobilenetv3_large")] == \
        ["ours", "published", "baseline"]
    assert rows["lat_small"]["objective"] == "latency" and rows["mobilenetv3_small"]["objective"] is None
    assert rows["squeezenas_lat_small"]["class_miou"] is not None  # the authors' weights, evaluated here
    assert rows["squeezenas_lat_large"]["class_miou"] is None  # no released weights
    for name in ("mac_small", "lat_small"):
        card = repo / "outputs" / "networks" / f"{name}.json"
        assert json.loads(card.read_text())["choices"] == rows[name]["architecture"]
        described = json.loads(run(["squeezenas", "describe", str(card), "--input-size", "64x128", "--json"],
                                   repo).stdout)
        assert rows[name]["gmacs"] == pytest.approx(described["macs"] / 1e9, rel=1e-12)
    assert {(c["space"], c["kind"]) for c in table["comparison"]} >= {("small", "ours"), ("small", "published")}
    for fig in ("figure5_macs_vs_miou.png", "figure6_latency_vs_miou.png"):
        assert (repo / "outputs" / "report" / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (repo / "outputs" / "report" / "table1.md").read_text()
    assert "mac_small" in md and "differs from the paper" in md


def test_latency_choice_is_under_the_mac_networks_latency(pipeline):
    repo, _ = pipeline
    from nas_core.cost.macs import architecture_cost, read_cost_table
    from nas_core.cost.model import model_path, read_model
    from nas_core.select.pareto import choose
    from nas_core.space.spaces import Architecture

    table_path = repo / "outputs" / "latency" / "tables" / "latency_small.parquet"
    table, model = read_cost_table(table_path), read_model(model_path(table_path))
    mac_arch = Architecture.load(repo / "outputs" / "networks" / "mac_small.json")
    # the latency choice prices with the latency model fitted over the table (issue 16)
    budget = model.predict(mac_arch)
    assert model.info["kind"] == "pairwise"
    assert budget != pytest.approx(architecture_cost(table, mac_arch, "latency_ms"))
    samples_dir = repo / "outputs" / "experiments" / "lat_small" / "samples"
    chosen = json.loads((samples_dir / "select_metrics.json").read_text())
    assert (chosen["rule"], chosen["reference"]) == ("best_under_budget", "mac_small")
    assert chosen["target"] == pytest.approx(budget)
    import pandas as pd
    samples = pd.read_parquet(samples_dir / "samples.parquet")
    latency = samples["latency_model"].to_numpy()
    assert chosen["budget_met"] == bool((latency <= budget).any())
    if chosen["budget_met"]:  # the paper's rule: the best estimated mIoU at no more than the MAC network's latency
        assert chosen["chosen_latency_model"] <= budget
        best = choose("best_under_budget", latency, samples["class_miou"].to_numpy(), budget)
    else:  # a tiny search may leave no sample under it: the cheapest is taken, and the report says so
        assert chosen["chosen_latency_model"] == pytest.approx(latency.min())
        best = int(latency.argmin())
        assert "no sample under" in (repo / "outputs" / "report" / "table1.md").read_text()
    assert samples.iloc[best]["choices"].split(",") == chosen["choices"]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert "outputs/networks/mac_small.json" in {d["path"] for d in lock["select@lat_small"]["deps"]}
    # the search optimised the model's expected latency; the benchmark timed the chosen network whole at
    # the table's input and put it beside both predictions
    search = json.loads((repo / "outputs" / "experiments" / "lat_small" / "search" / "metrics.json").read_text())
    assert search["cost_metric"] == "latency_model"
    bench = json.loads((repo / "outputs" / "benchmark" / "lat_small" / "metrics.json").read_text())
    pred = bench["prediction"]
    assert pred["measured_ms"] > 0 and pred["input_size"] == [table["input_h"].iloc[0], table["input_w"].iloc[0]]
    assert pred["model_ms"] == pytest.approx(chosen["chosen_latency_model"])
    assert pred["table_ms"] == pytest.approx(chosen["chosen_latency_ms"])
    assert pred["model_error"] == pytest.approx(pred["model_ms"] / pred["measured_ms"] - 1)
    assert "predicted by the model" in (repo / "outputs" / "benchmark" / "lat_small" / "report.md").read_text()


def test_lineage_traces_each_experiments_model_to_the_dataset_hash(pipeline):
    repo, _ = pipeline
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    cityscapes_md5 = {o["path"]: o["md5"] for o in lock["stages"]["data"]["outs"]}["data/cityscapes"]
    chain_ = json.loads(run(["squeezenas", "lineage", "squeezenas-lat_small", "--json"], repo).stdout)
    stages = {n.get("stage") for n in chain_[1:]}
    assert {"benchmark@lat_small", "train_fine@lat_small", "select@lat_small", "select@mac_small",
            "search@lat_small", "latency_table", "data"} <= stages
    assert "benchmark@mac_small" not in stages  # the MAC network's choice feeds it, not its training
    inputs = {k: v for n in chain_[1:] for k, v in n["inputs"].items()}
    assert inputs["data/cityscapes"] == cityscapes_md5


def test_second_repro_is_a_noop_and_one_alpha_reruns_only_its_chain_and_the_report(pipeline):
    repo, _ = pipeline
    again = run(["dvc", "repro"], repo)
    assert stages_run(again.stdout) == set(), again.stdout
    changed = run(["dvc", "exp", "run", "--set-param", "experiments.lat_small.alpha=3.0"], repo, timeout=1800)
    ran = stages_run(changed.stdout)
    assert "search@lat_small" in ran and "report" in ran, ran
    assert ran <= chain("lat_small") | {"report"}, ran  # downstream of an unchanged output is skipped


def end_group(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM to the server and its workers; SIGKILL to what a loaded machine has not ended after `grace_s`."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=10).read())


def test_mlflow_ui_shows_parent_run_experiment_runs_and_one_model_per_experiment(pipeline):
    repo, _ = pipeline
    port = _free_port()
    ui = subprocess.Popen(["mlflow", "ui", "--backend-store-uri", "sqlite:///mlflow.db", "--host", "127.0.0.1",
                           "--port", str(port)], cwd=repo, env=stage_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(base + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        exp = _api(base, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=squeezenas")["experiment"]
        runs = _api(base, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]],
                                                          "max_results": 500})["runs"]
        tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
        parents = [r["info"]["run_id"] for r, t in zip(runs, tags) if t.get("squeezenas.stage") == "pipeline"]
        assert parents
        children = {t["squeezenas.stage"] for t in tags if t.get("mlflow.parentRunId") in parents}
        assert {"data", "cost_tables", "search@mac_small", "select@lat_small", "train_fine@lat_small",
                "benchmark@mac_small", "report"} <= children
        by_stage = {t["squeezenas.stage"]: t for t in tags}
        assert by_stage["search@lat_small"]["squeezenas.experiment"] == "lat_small"
        assert "squeezenas.experiment" not in by_stage["data"]
        for name in TINY_EXPERIMENTS:
            model = _api(base, f"/api/2.0/mlflow/registered-models/get?name=squeezenas-{name}")["registered_model"]
            assert model["latest_versions"]
    finally:
        end_group(ui)
