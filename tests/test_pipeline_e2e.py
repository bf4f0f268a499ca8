"""The whole pipeline on a tiny configuration in a fresh copy of the repository: `squeezenas run`
(dvc repro of every stage), lineage back to the dataset hash, a no-op second repro, a parameter
change that reruns exactly what depends on it, and the MLflow UI's REST API."""
from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.request

import pytest
import yaml

from tests.repo_copy import make_repo_copy, run, stage_env

pytestmark = pytest.mark.slow

TINY = {
    "data": {"cityscapes_train": 6, "cityscapes_val": 2, "cityscapes_extra": 2,
             "cityscapes_size": {"height": 64, "width": 128}, "coco_train": 4, "coco_val": 2,
             "coco_size": {"height": 64, "width": 96}, "imagenet_classes": 2, "imagenet_train_per_class": 4,
             "imagenet_val_per_class": 2, "imagenet_size": 32},
    "cost_tables": {"spaces": ["small"]},
    "latency": {"input_size": {"height": 64, "width": 128}, "warmup": 1, "runs": 3, "min_time_s": 0.0,
                "fidelity": {"num_networks": 3, "seed": 0, "space": "small"}},
    "search": {"epochs": 1, "patch": {"height": 64, "width": 128}, "batch_size": 2, "log_every": 1},
    "sample": {"num_samples": 4, "workers": 1, "batch_size": 2},
    "train": {"pretrain_imagenet": {"epochs": 1, "patch": {"height": 32, "width": 32}, "batch_size": 4,
                                    "milestones": []},
              "pretrain_coco": {"epochs": 1, "patch": {"height": 64, "width": 64}, "batch_size": 2},
              "train_coarse": {"epochs": 1, "patch": {"height": 64, "width": 64}, "batch_size": 2},
              "train_fine": {"epochs": 1, "patch": {"height": 64, "width": 64}, "batch_size": 2,
                             "milestones": []}},
    "benchmark": {"input_size": {"height": 64, "width": 128}, "warmup": 1, "runs": 2,
                  "baselines": ["squeezenas_lat_small"]},
}


def merge(base: dict, update: dict) -> dict:
    for k, v in update.items():
        base[k] = merge(base.get(k) or {}, v) if isinstance(v, dict) and k != "weights" else v
    return base


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([a-z_]+)'", output))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    repo = make_repo_copy(tmp_path_factory.mktemp("e2e") / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(merge(params, TINY), sort_keys=False))
    run(["git", "commit", "-qam", "tiny params"], repo)
    first = run(["squeezenas", "run"], repo, timeout=1800)
    return repo, first


def test_run_reproduces_every_stage_and_prints_where_things_are(pipeline):
    repo, first = pipeline
    spec = yaml.safe_load((repo / "dvc.yaml").read_text())
    assert stages_run(first.stdout) == set(spec["stages"])
    assert "report:" in first.stdout and "mlflow ui --backend-store-uri" in first.stdout
    # every stage ran warm in a child of the run's fork server (flows/forkserver.py), none fell back
    timing = json.loads((repo / "outputs" / "metrics" / "pipeline_timing.json").read_text())
    assert (timing["forkserver_served"], timing["forkserver_refused"]) == (len(spec["stages"]), 0), timing
    assert "fork server refused" not in first.stderr
    report = repo / "outputs" / "benchmark" / "report.md"
    assert report.is_file() and "squeezenas_lat_small" in report.read_text()


def test_dvc_plots_render_front_search_and_training_curves(pipeline):
    repo, _ = pipeline
    run(["dvc", "plots", "show", "-o", "plots_html"], repo)
    html = (repo / "plots_html" / "index.html").read_text()
    for name in ("fronts/front_macs.csv", "search_curves.csv", "train_fine/curves.csv", "pretrain_imagenet/curves.csv"):
        assert name in html, name


def test_lineage_traces_the_registered_model_to_the_dataset_hash(pipeline):
    repo, _ = pipeline
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    outs = {o["path"]: o["md5"] for o in lock["stages"]["data"]["outs"]}
    cityscapes_md5 = outs["data/cityscapes"]
    cost_md5 = {o["path"]: o["md5"] for o in lock["stages"]["cost_tables"]["outs"]}["outputs/cost_tables"]
    proc = run(["squeezenas", "lineage", "squeezenas", "--json"], repo)
    chain = json.loads(proc.stdout)
    stages = [n.get("stage") for n in chain[1:]]
    assert {"benchmark", "train_fine", "select", "search", "data", "cost_tables"} <= set(stages)
    inputs = {k: v for n in chain[1:] for k, v in n["inputs"].items()}
    assert inputs["data/cityscapes"] == cityscapes_md5
    assert inputs["outputs/cost_tables"] == cost_md5
    text = run(["squeezenas", "lineage", "squeezenas"], repo).stdout
    assert cityscapes_md5 in text


def test_second_repro_is_a_noop_and_alpha_reruns_only_what_depends_on_it(pipeline):
    repo, _ = pipeline
    again = run(["dvc", "repro"], repo)
    assert stages_run(again.stdout) == set(), again.stdout
    changed = run(["dvc", "exp", "run", "--set-param", "search.alpha=3.0"], repo, timeout=1800)
    ran = stages_run(changed.stdout)
    assert "search" in ran
    assert not ran & {"data", "cost_tables", "latency_table"}, ran


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=10).read())


def test_mlflow_ui_shows_parent_run_stage_runs_and_registered_model(pipeline):
    repo, _ = pipeline
    port = _free_port()
    ui = subprocess.Popen(["mlflow", "ui", "--backend-store-uri", "sqlite:///mlflow.db", "--host", "127.0.0.1",
                           "--port", str(port)], cwd=repo, env=stage_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
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
        assert {"data", "cost_tables", "search", "select", "train_fine", "benchmark"} <= children
        model = _api(base, "/api/2.0/mlflow/registered-models/get?name=squeezenas")["registered_model"]
        assert model["latest_versions"]
    finally:
        ui.terminate()
        ui.wait(20)
