"""Subcommand `cluster`: the search or a training stage as a job of a SLURM or Kubernetes cluster.

  squeezenas cluster sbatch [--stage S] [--experiment NAME] [--out FILE]   the sbatch script
  squeezenas cluster k8s [--kind trainjob|indexed-job] [...] [--out FILE]   the Kubernetes manifest
  squeezenas cluster submit --scheduler slurm|k8s [...]                     write, submit, watch (a Prefect flow)
"""
from __future__ import annotations

import sys

from cli.args import add_params_args, quiet_user_tracebacks
from cli.stages import add_experiment_arg, experiment_kwargs, first_experiment

STAGES = ("search", "pretrain_imagenet", "pretrain_coco", "train_coarse", "train_fine")


def _params(args):
    from nas_core.config import load_params

    return load_params(args.params, tuple(args.overrides), args.experiment)


def _write(args, text: str) -> int:
    from tasks.cluster import write_launcher

    if args.out:
        print(f"[cluster] wrote {write_launcher(args.out, text)}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _sbatch(args) -> int:
    from tasks.cluster import sbatch_script, stage_job

    params = _params(args)
    return _write(args, sbatch_script(params, stage_job(params, args.stage, args.params)))


def _k8s(args) -> int:
    from tasks.cluster import k8s_manifest, stage_job

    params = _params(args)
    return _write(args, k8s_manifest(params, stage_job(params, args.stage, args.params), args.kind))


def check_client(args):
    """Before any Prefect server starts: the scheduler's client must be on this machine."""
    import shutil

    tool = "sbatch" if args.scheduler == "slurm" else "kubectl"
    if shutil.which(tool) is None:
        what = ("the SLURM client (a login node of the cluster)" if tool == "sbatch"
                else "kubectl configured for the cluster")
        raise FileNotFoundError(f"{tool}: not found on PATH: `squeezenas cluster submit --scheduler {args.scheduler}` "
                                f"needs {what} on this machine")


def _submit(args) -> int:
    from cli.server import stage_api

    check_client(args)
    from flows.cluster import cluster_flow

    quiet_user_tracebacks()
    with stage_api():
        cluster_flow(args.params, tuple(args.overrides), stage=args.stage, scheduler=args.scheduler,
                     kind=args.kind, **experiment_kwargs(args))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("cluster", help="the search or a training stage as a multi-node job of a SLURM or Kubernetes "
                                       "cluster: write its sbatch script or manifest, or submit and watch it")
    actions = p.add_subparsers(dest="action", required=True)
    for action, func, text in (
            ("sbatch", _sbatch, "write the sbatch script (srun: the stage command on every node, torchrun with the "
                                "c10d rendezvous on the first)"),
            ("k8s", _k8s, "write the Kubernetes manifest: a Kubeflow Trainer v2 TrainJob, or an indexed Job with a "
                          "headless Service where that operator is absent"),
            ("submit", _submit, "write the launcher into paths.cluster, submit it (sbatch / kubectl apply) and watch "
                                "the job to its end (a Prefect flow)")):
        a = actions.add_parser(action, help=text)
        add_params_args(a)
        add_experiment_arg(a)
        a.add_argument("--stage", choices=STAGES, default="search", help="the stage to run (default: search)")
        if action in ("k8s", "submit"):
            a.add_argument("--kind", choices=("trainjob", "indexed-job"), default=None,
                           help="Kubernetes object (default: cluster.kubernetes.kind)")
        if action == "submit":
            a.add_argument("--scheduler", choices=("slurm", "k8s"), required=True)
        else:
            a.add_argument("--out", metavar="FILE", help="write it here (default: standard output)")
        a.set_defaults(func=func, default_experiment=first_experiment)
