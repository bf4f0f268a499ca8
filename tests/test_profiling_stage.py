"""The latency_table stage end to end: Prefect flow and MLflow run, the CLI, DVC in a fresh repository."""
import json

import pytest

from nas_core.cost.macs import read_cost_table
from nas_core.cost.model import read_model
from nas_core.cost.pool import fit_networks
from tests.repo_copy import TINY_EXPERIMENTS, make_repo_copy, run

SMALL_RUN = {"input_size": {"height": 32, "width": 64}, "warmup": 0, "runs": 2, "min_time_s": 0.0,
             "clock": "thread", "fidelity": {"num_networks": 3, "seed": 1, "space": "small"},
             "model": {"kind": "pairwise", "fit_networks": 8, "seed": 2}}


@pytest.mark.slow
def test_flow_writes_table_facts_fidelity_and_an_mlflow_run(tmp_path, monkeypatch, prefect_harness):
    import mlflow
    import yaml

    from flows.profile import profile_flow

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "tracking": {"mlflow_uri": "sqlite:///mlflow.db", "experiment": "t"},
        "paths": {"latency": "lat", "metrics": "m"}, "latency": SMALL_RUN}))
    out = profile_flow("params.yaml")
    table = read_cost_table(tmp_path / "lat" / "tables" / "latency_small.parquet")
    assert (table["input_h"] == 32).all() and table["latency_ms"].notna().all()
    facts = json.loads((tmp_path / "lat" / "device.json").read_text())
    assert facts["protocol"]["runs"] == 2 and facts["target"].startswith("local:")
    fidelity = json.loads((tmp_path / "lat" / "fidelity.json").read_text())
    assert fidelity["held_out"] == 3 and fidelity["fitted"] == 8 and len(fidelity["networks"]) == 3
    assert all(-1 <= fidelity[who]["kendall_tau"] <= 1 and fidelity[who]["n"] == 3 for who in ("table", "model"))
    # the model's predictions are its own (fitted on 8 other networks), not the table's
    assert [n["model_ms"] for n in fidelity["networks"]] != [n["table_ms"] for n in fidelity["networks"]]
    model = read_model(tmp_path / "lat" / "tables" / "latency_small.model.json")
    assert model.info["kind"] == "pairwise" and model.info["networks"] == 8 and model.pairwise is not None
    fitted = {tuple(a.choices) for a in fit_networks("small", (8, 2))}
    assert not fitted & {tuple(n["choices"]) for n in fidelity["networks"]}  # held out
    assert (tmp_path / "lat" / "fidelity.png").is_file()
    summary = json.loads((tmp_path / "m" / "latency_table.json").read_text())
    assert summary["fidelity.model.kendall_tau"] == fidelity["model"]["kendall_tau"]
    assert summary["fidelity.table.mape"] == fidelity["table"]["mape"] and summary["small.rows"] == 263
    assert out["tables"]["small"]["profile_measured"] == out["tables"]["small"]["profile_units"] == 128
    assert out["tables"]["small"]["model_networks"] == 8

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run_,) = mlflow.search_runs(experiment_names=["t"], output_format="list")
    tags = run_.data.tags
    assert tags["squeezenas.stage"] == "latency_table"
    assert tags["device.hostname"] == facts["hostname"] and tags["device.onnxruntime"] == facts["onnxruntime"]
    assert run_.data.params["backend"] == "onnxruntime" and run_.data.params["fidelity.num_networks"] == "3"
    assert "fidelity.model.kendall_tau" in run_.data.metrics and "small.max_ms" in run_.data.metrics
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_.info.run_id, "latency")}
    assert {"latency/latency_small.parquet", "latency/latency_small.model.json", "latency/device.json",
            "latency/fidelity.png", "latency/fidelity.json"} <= arts

    # a second run finds every measurement stored: nothing is measured again; the tables folder is
    # written whole, so the table of a space no longer configured does not linger
    (tmp_path / "lat" / "tables" / "latency_large.parquet").write_bytes(b"stale")
    again = profile_flow("params.yaml")
    assert again["tables"]["small"]["profile_measured"] == 0
    assert sorted(p.name for p in (tmp_path / "lat" / "tables").iterdir()) == ["latency_small.model.json",
                                                                                "latency_small.parquet"]


@pytest.mark.slow
def test_dvc_repro_latency_table_resumes_from_stored_measurements(tmp_path):
    import yaml

    repo = make_repo_copy(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["latency"].update(SMALL_RUN, spaces=["small"])
    params["experiments"] = TINY_EXPERIMENTS  # the small space's only: the others need their latency tables
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "commit", "-qam", "small profile"], repo)
    first = run(["dvc", "repro", "latency_table"], repo)
    log = first.stdout + first.stderr
    assert "[profile] 128/128" in log and "left" in log  # per-unit progress with the time left
    tables = repo / "outputs" / "latency" / "tables"
    table = read_cost_table(tables / "latency_small.parquet")
    assert (table["kind"] == "block").sum() == 20 * 13
    (out,) = [o for o in yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["latency_table"]["outs"]
              if o["path"] == "outputs/latency/tables"]
    assert out["md5"].endswith(".dir") and out["nfiles"] == 2  # the folder is the output: a table + model per space
    metrics = json.loads((repo / "outputs" / "metrics" / "latency_table.json").read_text())
    assert metrics["fidelity.held_out"] == 3 and metrics["fidelity.model.n"] == 3
    # forced rerun: DVC deletes the outputs, the measurement store survives, nothing is re-measured
    forced = run(["dvc", "repro", "-f", "latency_table"], repo)
    assert "[profile] 1/128" not in forced.stdout + forced.stderr
    assert read_cost_table(tables / "latency_small.parquet")["latency_ms"].equals(table["latency_ms"])
