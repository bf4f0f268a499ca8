"""Launchers of a multi-node stage on SLURM and Kubernetes (issue 17), generated from params by `squeezenas
cluster sbatch|k8s`: the script parses (bash -n) and the manifests load (yaml), each carrying the rendezvous on
the first node, the node count, the image and the command every node runs. No cluster is reachable here:
submitting fails with an error naming the missing client."""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.repo_copy import ROOT, stage_env

EXPERIMENT = {"space": "small", "objective": "macs", "cost_table": "outputs/cost_tables/macs_small.parquet",
              "alpha": 0.5, "choice": {"rule": "nearest_cost", "metric": "macs", "reference": "squeezenas_mac_small"}}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["experiments"] = {"mac_small": EXPERIMENT, "mac_small_b": {**EXPERIMENT, "alpha": 0.1}}
    params["cluster"].update(nnodes=4, nproc=8)
    params["cluster"]["kubernetes"].update(image="registry.example.com/squeezenas:1.0", volume_claim="squeezenas-data",
                                           gpus_per_node=8)
    params["cluster"]["slurm"].update(partition="gpu", gpus_per_node=8)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def squeezenas(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=root,
                          env=env or stage_env(PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120)


def node_command(line: str) -> list[str]:
    return shlex.split(line.split("exec ", 1)[1])


def test_sbatch_script_runs_the_stage_command_on_every_node_with_the_rendezvous_on_the_first(project):
    proc = squeezenas(project, "cluster", "sbatch", "--out", "job.sbatch")
    assert proc.returncode == 0, proc.stderr
    script = project / "job.sbatch"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    for option in ("--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8", "--partition=gpu",
                   "--job-name=squeezenas-search-mac-small"):
        assert f"#SBATCH {option}" in lines, option
    # the first node of the allocation hosts the c10d store; every node's command names it
    assert 'RDZV_HOST="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"' in lines
    assert 'export RDZV_ENDPOINT="${RDZV_HOST}:29400"' in lines
    exec_line = next(line for line in lines if line.strip().startswith("exec "))
    assert node_command(exec_line) == ["squeezenas", "search", "--experiment", "mac_small", "--set", "search.nnodes=4",
                                       "--set", "search.nproc=8", "--set", "search.rdzv_endpoint=$RDZV_ENDPOINT"]
    assert lines[-1] == "srun --nodes=4 --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c node"
    assert "source .venv/bin/activate" in lines


def test_sbatch_of_a_training_stage_of_another_experiment_to_stdout(project):
    proc = squeezenas(project, "cluster", "sbatch", "--stage", "train_fine", "--experiment", "mac_small_b",
                      "--set", "cluster.nnodes=2", "--set", "cluster.nproc=4")
    assert proc.returncode == 0, proc.stderr
    exec_line = next(line for line in proc.stdout.splitlines() if line.strip().startswith("exec "))
    assert node_command(exec_line)[:9] == ["squeezenas", "train", "train_fine", "--experiment", "mac_small_b",
                                           "--set", "train.nnodes=2", "--set", "train.nproc=4"]
    assert "#SBATCH --nodes=2" in proc.stdout.splitlines()


def test_trainjob_manifest_carries_nodes_image_command_and_rendezvous(project):
    proc = squeezenas(project, "cluster", "k8s", "--kind", "trainjob")
    assert proc.returncode == 0, proc.stderr
    doc = yaml.safe_load(proc.stdout)
    assert doc["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and doc["kind"] == "TrainJob"
    assert doc["metadata"]["name"] == "squeezenas-search-mac-small"
    assert doc["spec"]["runtimeRef"] == {"name": "torch-distributed"}
    trainer = doc["spec"]["trainer"]
    assert trainer["numNodes"] == 4 and trainer["image"] == "registry.example.com/squeezenas:1.0"
    assert trainer["resourcesPerNode"] == {"limits": {"nvidia.com/gpu": 8}}
    assert trainer["command"][:2] == ["bash", "-c"]
    cd, command = trainer["command"][2].split(" && ")
    assert cd == "cd /workspace"
    assert node_command(command) == ["squeezenas", "search", "--experiment", "mac_small", "--set", "search.nnodes=4",
                                     "--set", "search.nproc=8", "--set",
                                     "search.rdzv_endpoint=${PET_MASTER_ADDR}:29400"]


def test_indexed_job_manifest_without_an_operator(project):
    proc = squeezenas(project, "cluster", "k8s", "--kind", "indexed-job", "--stage", "pretrain_coco",
                      "--set", "cluster.nnodes=2", "--set", "cluster.nproc=4")
    assert proc.returncode == 0, proc.stderr
    service, job = yaml.safe_load_all(proc.stdout)
    name = "squeezenas-pretrain-coco-mac-small"
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    assert service["metadata"]["name"] == job["metadata"]["name"] == name
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": name}
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 2
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == name  # pod i is <name>-i.<name>: node 0 hosts the rendezvous
    (container,) = pod["containers"]
    assert container["image"] == "registry.example.com/squeezenas:1.0" and container["workingDir"] == "/workspace"
    assert container["command"] == ["squeezenas", "train", "pretrain_coco", "--experiment", "mac_small", "--set",
                                    "train.nnodes=2", "--set", "train.nproc=4", "--set",
                                    f"train.rdzv_endpoint={name}-0.{name}:29400"]
    assert container["volumeMounts"] == [{"name": "shared", "mountPath": "/workspace"}]
    assert pod["volumes"] == [{"name": "shared", "persistentVolumeClaim": {"claimName": "squeezenas-data"}}]


def test_submitting_without_the_scheduler_s_client_fails_naming_it(project, tmp_path):
    bare = tmp_path / "bin"  # a PATH with neither sbatch nor kubectl
    bare.mkdir()
    for scheduler, tool in (("slurm", "sbatch"), ("k8s", "kubectl")):
        proc = squeezenas(project, "cluster", "submit", "--scheduler", scheduler,
                          env=stage_env(PYTHONPATH=str(ROOT), PATH=str(bare)))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines()[-1].startswith(
            f"squeezenas cluster: error: {tool}: not found on PATH: `squeezenas cluster submit --scheduler "
            f"{scheduler}` needs"), proc.stderr


def test_the_prefect_task_fails_naming_the_missing_client(project, tmp_path, monkeypatch, prefect_harness):
    from nas_core.config import load_params
    from tasks.cluster import k8s_manifest, sbatch_script, stage_job, submit_and_watch, write_launcher

    params = load_params(project / "params.yaml", experiment="mac_small")
    job = stage_job(params, "search")
    monkeypatch.setenv("PATH", str(tmp_path))
    script = write_launcher(tmp_path / "job.sbatch", sbatch_script(params, job))
    with pytest.raises(FileNotFoundError, match=r"^sbatch: not found on PATH: submitting .*job.sbatch needs the SLURM"):
        submit_and_watch(str(script), 0.1)
    manifest = write_launcher(tmp_path / "job.yaml", k8s_manifest(params, job))
    with pytest.raises(FileNotFoundError, match=r"^kubectl: not found on PATH: submitting .*job.yaml needs kubectl"):
        submit_and_watch(str(manifest), 0.1)


def test_a_stage_that_is_not_gang_scheduled_is_refused(project):
    proc = squeezenas(project, "cluster", "sbatch", "--stage", "sample")
    assert proc.returncode == 2 and "invalid choice: 'sample'" in proc.stderr
