"""Subcommand `search` (paper sections 4.1-4.3): the stage's Prefect flow with params.yaml (+ --set)."""
from __future__ import annotations


def _search(args) -> int:
    from flows.search import search_flow

    search_flow(args.params, tuple(args.overrides))
    return 0


def add_parser(sub) -> None:
    from flows.cli import add_params_args

    p = sub.add_parser("search", help="stage search: Gumbel-softmax supernet search with the resource-aware "
                                      "loss of the configured cost table (resumes from its checkpoint)")
    add_params_args(p)
    p.set_defaults(func=_search)
