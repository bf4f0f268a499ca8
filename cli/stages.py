"""The stage subcommands that run one Prefect flow with params.yaml (+ --set overrides).

`profile` (with --trust-host) and `train STAGE` have their own modules.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

from cli.args import add_params_args, quiet_user_tracebacks

# subcommand -> (flow "module:function", help)
STAGE_COMMANDS = {
    "data": ("flows.data:data_flow", "stage data: generate the default datasets (or check the real ones)"),
    "cost-tables": ("flows.cost_tables:cost_tables_flow",
                    "stage cost_tables: MAC/parameter tables of the configured spaces"),
    "search": ("flows.search:search_flow",
               "stage search: Gumbel-softmax supernet search with the resource-aware loss of the configured "
               "cost table (resumes from its checkpoint)"),
    "sample": ("flows.sample:sample_flow",
               "stage sample: draw K architectures from the searched distribution and estimate each one's "
               "mIoU through the supernet (resumable)"),
    "select": ("flows.sample:select_flow",
               "stage select: the estimated Pareto fronts, the plots and chosen_architecture.json"),
    "benchmark": ("flows.benchmark:benchmark_flow",
                  "stage benchmark: latency, mIoU, MACs and parameters of the retrained network (with "
                  "--experiment: that experiment's; without: ours and benchmark.baselines)"),
    "report": ("flows.report:report_flow",
               "stage report: the paper's experiment gathered: Table 1 (all networks timed in one session) "
               "and Figures 5-6 in paths.report"),
}


def run_flow(target: str, args) -> int:
    from cli.server import stage_api

    module, name = target.split(":")
    flow = getattr(importlib.import_module(module), name)
    quiet_user_tracebacks()
    with stage_api():
        flow(args.params, tuple(args.overrides), **experiment_kwargs(args))
    return 0


# the stages of an experiment's chain (dvc.yaml's foreach groups): they take --experiment NAME
EXPERIMENT_COMMANDS = ("search", "sample", "select", "benchmark")


def experiment_kwargs(args) -> dict:
    return {"experiment": args.experiment} if getattr(args, "experiment", None) else {}


def add_experiment_arg(p) -> None:
    p.add_argument("--experiment", metavar="NAME", default=None,
                   help="run the stage of experiment NAME (params.yaml's experiments: its search settings, "
                        "choice rule and folders under paths.experiments)")


def check_datasets(params) -> None:
    """`data`, before any server starts: with generate: false a missing real dataset is refused; with
    generate: true a dataset path holding anything the pipeline did not generate is (never replaced)."""
    from nas_core.config import missing_datasets

    if params.data.generate:
        from flows.data import refuse_foreign_folders

        refuse_foreign_folders(params)
    missing = missing_datasets(params)
    if missing:
        raise FileNotFoundError("; ".join(missing))


def first_experiment(params) -> str | None:
    """`squeezenas search` without --experiment searches the first experiment of params.yaml (the call every
    node of a multi-node search runs); with no experiments configured, the search section as it is."""
    name = next(iter(params.experiments), None)
    if name is not None:  # on stderr: `squeezenas cluster sbatch` writes its script to stdout
        print(f"[squeezenas] no --experiment: experiment {name}, the first of params.yaml's "
              f"({', '.join(params.experiments)})", file=sys.stderr, flush=True)
    return name


def check_search_inputs(params) -> None:
    """`search` across machines (search.nnodes > 1), before any server starts: this node must see the dataset
    and the cost table (storage shared by every node; the workers check the output folder once they meet)."""
    cfg = params.search
    if cfg.nnodes == 1:
        return
    for field, path in (("paths.dataset", params.paths.dataset), ("search.cost_table", cfg.cost_table)):
        if not Path(path).exists():
            raise FileNotFoundError(f"{field}: {path}: not found on this node; with search.nnodes {cfg.nnodes} every "
                                    f"node reads it from storage shared by all nodes")


PREFLIGHT = {"data": check_datasets, "search": check_search_inputs}  # cheap checks of a stage's inputs
DEFAULT_EXPERIMENT = {"search": first_experiment}


def add_parser(sub) -> None:
    for command, (target, text) in STAGE_COMMANDS.items():
        p = sub.add_parser(command, help=text)
        add_params_args(p)
        if command in EXPERIMENT_COMMANDS:
            add_experiment_arg(p)
        p.set_defaults(func=lambda args, target=target: run_flow(target, args), preflight=PREFLIGHT.get(command),
                       default_experiment=DEFAULT_EXPERIMENT.get(command))
