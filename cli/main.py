"""The `squeezenas` command: one subcommand per stage plus tools (describe, miou, lineage)."""
from __future__ import annotations

import argparse
import difflib
import importlib
import re
import signal
import sys

from cli import forkserver
from cli.args import USER_ERRORS
from tasks import processes
from tasks.telemetry import quiet_telemetry

# subcommand -> module providing add_parser(subparsers); explicit, no import-time registry
COMMANDS = {
    "describe": "cli.describe",
    "data": "cli.stages",
    "dataset": "cli.dataset",
    "cost-tables": "cli.stages",
    "profile": "cli.latency",
    "miou": "cli.miou",
    "sample": "cli.stages",
    "select": "cli.stages",
    "lineage": "cli.lineage",
    "run": "cli.run",
    "train": "cli.train",
    "benchmark": "cli.stages",
    "search": "cli.stages",
    "report": "cli.stages",
    "cluster": "cli.cluster",
}


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, with the nearest choice for a misspelt one."""

    def error(self, message: str):
        hint = ""
        bad = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if bad:
            close = difflib.get_close_matches(bad.group(1), re.findall(r"'([^']*)'", bad.group(2)), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
        self.exit(2, f"{self.prog}: error: {message}{hint} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="squeezenas", description=__doc__)
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
    processes.raise_on_termination(argv[0] if argv else "")
    args = build_parser().parse_args(argv)
    try:
        check_params(args)
        return int(args.func(args) or 0)
    except USER_ERRORS as e:
        print(f"squeezenas {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except BaseException as e:
        signum = processes.signal_of(e)
        if signum is None:
            raise
        name = signal.Signals(signum).name
        processes.exit_now(128 + signum, f"squeezenas {args.command}: interrupted ({name}); {processes.RESUME_HINT}")


def check_params(args: argparse.Namespace) -> None:
    """A command that reads params.yaml checks it (and its --set overrides, and the stage's cheap
    preconditions) first: a typo costs no Prefect server start and no torch/Prefect/MLflow import."""
    if not hasattr(args, "params"):
        return
    from nas_core.config import load_params

    params = load_params(args.params, tuple(getattr(args, "overrides", ())), getattr(args, "experiment", None))
    if getattr(args, "experiment", "") is None and getattr(args, "default_experiment", None):
        args.experiment = args.default_experiment(params)  # e.g. `search` alone: the first configured experiment
        params = params.for_experiment(args.experiment) if args.experiment else params
    if getattr(args, "preflight", None):
        args.preflight(params)


def one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename and type(error).__str__ is OSError.__str__:
        text = f"{error.filename}: {error.strerror}"  # not "[Errno 13] Permission denied: 'x'"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split("\n"))


if __name__ == "__main__":
    sys.exit(main())
