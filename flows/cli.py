"""The `squeezenas` command: one subcommand per stage plus tools (describe, miou, lineage)."""
from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import re
import signal
import sys

from flows import forkserver, quiet_telemetry
from tasks import processes

# errors whose message is the whole story (it names the file, the field or the path): one line, exit 2, no traceback
USER_ERRORS = (ValueError, OSError)

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
    "report": "flows.cmd_stages",
}


def add_params_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter, e.g. --set search.alpha=0.5 (repeatable)")


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
        processes.exit_now(128 + signum, f"squeezenas {args.command}: interrupted ({signal.Signals(signum).name}); "
                           "the work done so far is kept: rerun the same command (or dvc repro) to resume")


def check_params(args: argparse.Namespace) -> None:
    """A command that reads params.yaml checks it (and its --set overrides, and the stage's cheap
    preconditions) first: a typo costs no Prefect server start and no torch/Prefect/MLflow import."""
    if not hasattr(args, "params"):
        return
    from nas_core.config import load_params

    params = load_params(args.params, tuple(getattr(args, "overrides", ())), getattr(args, "experiment", None))
    if getattr(args, "preflight", None):
        args.preflight(params)


def one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename and type(error).__str__ is OSError.__str__:
        text = f"{error.filename}: {error.strerror}"  # not "[Errno 13] Permission denied: 'x'"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split("\n"))


class _NoUserTracebacks(logging.Filter):
    """Prefect logs a failed task or flow with its traceback; for a user's error the one line the
    command prints says it all (the Prefect API still gets the traceback: this filters the console)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], USER_ERRORS):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_user_tracebacks() -> None:
    """Install the filter on the console handlers Prefect configured (call after importing a flow)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not any(isinstance(f, _NoUserTracebacks)
                                                                  for f in handler.filters):
            handler.addFilter(_NoUserTracebacks())


if __name__ == "__main__":
    sys.exit(main())
