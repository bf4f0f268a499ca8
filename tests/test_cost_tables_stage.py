"""The first stage wired end to end: Prefect flow, MLflow run, DVC stage in a fresh repository."""
import json

import pytest

from nas_core.cost.macs import architecture_cost, read_cost_table
from nas_core.space.zoo import PUBLISHED
from tests.repo_copy import make_repo_copy, run


def test_flow_writes_tables_and_mlflow_run(tmp_path, monkeypatch, prefect_harness):
    import mlflow

    from flows.cost_tables import cost_tables_flow
    from nas_core.data import generate_folder

    monkeypatch.chdir(tmp_path)
    generate_folder(tmp_path / "mine", "rgb", num_train=1, num_val=1, size=(32, 64))  # 7 classes, not 19
    (tmp_path / "params.yaml").write_text(
        "tracking: {mlflow_uri: 'sqlite:///mlflow.db', experiment: t}\n"
        "paths: {cost_tables: out, metrics: metrics, dataset: mine}\n"
        "data: {format: folder}\ntrain: {train_coarse: {enabled: false}}\n"
        "cost_tables: {spaces: [small, xlarge], input_size: {height: 512, width: 1024}}\n")
    summaries = cost_tables_flow("params.yaml")
    assert set(summaries) == {"small", "xlarge"}
    table = read_cost_table(tmp_path / "out" / "macs_small.parquet")
    # the decoder's last layers have the dataset's classes: classes.yaml's 7
    assert (table["input_h"] == 512).all() and (table["num_classes"] == 7).all()
    assert json.loads((tmp_path / "metrics" / "cost_tables.json").read_text())["xlarge"]["rows"] == 22 * 13 + 3

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["t"], output_format="list")
    assert len(runs) == 1
    run_ = runs[0]
    assert run_.data.tags["squeezenas.stage"] == "cost_tables"
    assert run_.data.tags["git.commit"]
    assert run_.data.params["num_classes"] == "7"
    assert run_.data.metrics["small.macs_min"] < run_.data.metrics["small.macs_max"]
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_.info.run_id, "cost_tables")}
    assert "cost_tables/macs_small.parquet" in arts


@pytest.mark.slow
def test_dvc_repro_cost_tables_in_a_fresh_repository(tmp_path):
    repo = make_repo_copy(tmp_path / "repo")
    run(["dvc", "repro", "cost_tables"], repo)
    table = read_cost_table(repo / "outputs" / "cost_tables" / "macs_small.parquet")
    arch = PUBLISHED["squeezenas_mac_small"]
    assert architecture_cost(table, arch) == 3_007_512_576
    again = run(["dvc", "repro", "cost_tables"], repo)
    assert "didn't change, skipping" in again.stdout and "Running stage" not in again.stdout
    lock = (repo / "dvc.lock").read_text()
    assert "path: outputs/cost_tables\n" in lock
    assert (repo / "mlflow.db").is_file()
