"""Flow `cluster`: one gang-scheduled stage (the search or a training stage) of one experiment as a job of a
SLURM or Kubernetes cluster (tasks/cluster.py): the launcher written from params, submitted, watched to its
end; returns the stage's metrics.json, which rank 0 wrote on the shared storage, so a parent flow goes on."""
from __future__ import annotations

import json
from pathlib import Path

from prefect import flow

from nas_core.config import load_params
from tasks.cluster import SEARCH, k8s_manifest, sbatch_script, stage_job, submit_and_watch, write_launcher
from tasks.dvc_files import METRICS


@flow(name="cluster")
def cluster_flow(params_file: str = "params.yaml", overrides: tuple[str, ...] = (), experiment: str | None = None,
                 stage: str = SEARCH, scheduler: str = "slurm", kind: str | None = None) -> dict:
    params = load_params(params_file, overrides, experiment)
    job = stage_job(params, stage, params_file)
    if scheduler == "slurm":
        path = write_launcher(Path(params.paths.cluster) / f"{job.name}.sbatch", sbatch_script(params, job))
    else:
        path = write_launcher(Path(params.paths.cluster) / f"{job.name}.yaml", k8s_manifest(params, job, kind))
    job_id = submit_and_watch(str(path), params.cluster.poll_s)
    out = Path(params.paths.search) if stage == SEARCH else Path(params.paths.train) / stage
    summary = json.loads((out / METRICS).read_text())
    print(f"[cluster] {job_id} done: {stage} on {summary.get('world_size')} processes -> {out}")
    return summary
