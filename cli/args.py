"""What the `squeezenas` subcommand modules share with the command: the params options, and the errors
that are the user's (one line, no traceback, on the command's stderr and Prefect's console)."""
from __future__ import annotations

import argparse
import logging

# errors whose message is the whole story (it names the file, the field or the path): one line, exit 2, no traceback
USER_ERRORS = (ValueError, OSError)


def add_params_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter, e.g. --set search.alpha=0.5 (repeatable)")


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
