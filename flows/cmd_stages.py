"""Stage subcommands: each runs its Prefect flow with params.yaml (+ --set overrides)."""
from __future__ import annotations


def _cost_tables(args) -> int:
    from flows.cost_tables import cost_tables_flow

    cost_tables_flow(args.params, tuple(args.overrides))
    return 0


def _data(args) -> int:
    from flows.data import data_flow

    data_flow(args.params, tuple(args.overrides))
    return 0


def add_parser(sub) -> None:
    from flows.cli import add_params_args

    p = sub.add_parser("data", help="stage data: generate the default datasets (or check the real ones)")
    add_params_args(p)
    p.set_defaults(func=_data)

    p = sub.add_parser("cost-tables", help="stage cost_tables: MAC/parameter tables of the configured spaces")
    add_params_args(p)
    p.set_defaults(func=_cost_tables)
