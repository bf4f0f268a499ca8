"""Sharing through DVC (issue 8): a teammate pulls the cost tables another clone produced and
pushed; their stage runs, and `squeezenas lineage`, name those inputs as pulled from the DVC remote
rather than made by a run in their own MLflow store."""
from __future__ import annotations

import subprocess

import mlflow
import pytest
import yaml

from nas_core.config import load_params
from tasks import tracking
from tests.repo_copy import make_repo_copy, run, stage_env


@pytest.mark.slow
def test_pulled_inputs_are_named_in_the_lineage(tmp_path, monkeypatch):
    remote = tmp_path / "remote"
    origin = make_repo_copy(tmp_path / "origin")
    run(["dvc", "remote", "modify", "shared", "url", str(remote)], origin)
    run(["dvc", "repro", "cost_tables"], origin, timeout=600)
    run(["dvc", "push", "cost_tables"], origin)
    run(["git", "add", "dvc.lock", ".dvc/config"], origin)
    run(["git", "commit", "-qm", "cost tables"], origin,
        stage_env(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t"))
    lock = yaml.safe_load((origin / "dvc.lock").read_text())
    md5 = next(o["md5"] for o in lock["stages"]["cost_tables"]["outs"] if o["path"] == "outputs/cost_tables")

    mate = tmp_path / "teammate"
    subprocess.run(["git", "clone", "-q", str(origin), str(mate)], check=True)
    run(["dvc", "pull", "cost_tables"], mate)
    assert (mate / "outputs" / "cost_tables" / "macs_small.parquet").is_file()
    assert not (mate / "mlflow.db").exists()  # no run of cost_tables in the teammate's store

    monkeypatch.chdir(mate)
    params = load_params("params.yaml")
    with tracking.stage_run(params.tracking, "search@mac_small") as stage:
        run_id = stage.info.run_id
    tags = mlflow.MlflowClient().get_run(run_id).data.tags
    assert tags["dvc.input.outputs/cost_tables"] == md5
    assert tags["dvc.external.outputs/cost_tables"].startswith(md5)
    assert tags["dvc.remote"] == f"shared {remote}"

    client = mlflow.MlflowClient()
    client.create_registered_model("pulled-test")
    client.create_model_version("pulled-test", source=f"runs:/{run_id}/model", run_id=run_id)
    chain = tracking.lineage(params.tracking, "pulled-test")
    assert chain[1]["stage"] == "search@mac_small" and "outputs/cost_tables" in chain[1]["external"]
    text = subprocess.run(["squeezenas", "lineage", "pulled-test"], cwd=mate, env=stage_env(),
                          capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in text.splitlines() if "input outputs/cost_tables" in ln)
    assert md5 in line and f"from DVC (remote shared {remote})" in line
