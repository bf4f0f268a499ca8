"""Subcommands `sample` and `select` (paper section 5.3.1), each running its Prefect flow."""
from __future__ import annotations


def _sample(args) -> int:
    from flows.sample import sample_flow

    sample_flow(args.params, tuple(args.overrides))
    return 0


def _select(args) -> int:
    from flows.sample import select_flow

    select_flow(args.params, tuple(args.overrides))
    return 0


def add_parser(sub) -> None:
    from flows.cli import add_params_args

    p = sub.add_parser("sample", help="stage sample: draw K architectures from the searched distribution and "
                                      "estimate each one's mIoU through the supernet (resumable)")
    add_params_args(p)
    p.set_defaults(func=_sample)

    p = sub.add_parser("select", help="stage select: the estimated Pareto fronts, the plots and "
                                      "chosen_architecture.json")
    add_params_args(p)
    p.set_defaults(func=_select)
