"""The `squeezenas` command: one subcommand per stage plus tools (describe, miou, lineage)."""
from __future__ import annotations

import argparse
import importlib
import signal
import sys

from flows import forkserver, quiet_telemetry
from tasks import processes

# subcommand -> module providing add_parser(subparsers); explicit, no import-time registry
COMMANDS = {
    "describe": "flows.cmd_describe",
    "data": "flows.cmd_stages",
    "cost-tables": "flows.cmd_stages",
    "profile": "flows.cmd_profile",
    "miou": "flows.cmd_miou",
    "sample": "flows.cmd_stages",
    "select": "flows.cmd_stages",
    "lineage": "flows.cmd_lineage",
    "run": "flows.run",
    "train": "flows.cmd_train",
    "benchmark": "flows.cmd_stages",
    "search": "flows.cmd_stages",
}


def add_params_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter, e.g. --set search.alpha=0.5 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="squeezenas", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in dict.fromkeys(COMMANDS.values()):  # each module once, in first-mention order
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    quiet_telemetry()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] != ["run"]:  # under `squeezenas run`: a warm child of its fork server does the work
        code = forkserver.run_via_server(argv)
        if code is not None:
            return code
    processes.raise_on_termination()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"squeezenas {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BaseException as e:
        signum = processes.signal_of(e)
        if signum is None:
            raise
        processes.exit_now(128 + signum, f"squeezenas {args.command}: interrupted ({signal.Signals(signum).name}); "
                           "the work done so far is kept: rerun the same command (or dvc repro) to resume")


if __name__ == "__main__":
    sys.exit(main())
