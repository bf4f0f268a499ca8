"""A stage command's Prefect tags belong to its flow runs, not to their task runs.

`cli.server.stage_api` tags the command's flow run with its host and pid, so that the next command can
mark the runs of a command that died as Crashed. Prefect gives every task run the tags in context, and
a task run with tags asks the API for those tags' concurrency slots before it starts: one more round
trip per task run (357 task runs in the default pipeline; benchmarks/bench_task_tags.py measures it).
A stage flow's body therefore runs with no tags in context; a subflow it calls gets the flow run's tags
back through `subflow_tags()`, so a dead command's subflow runs are found as well."""
from __future__ import annotations

import functools
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Callable, Iterator, TypeVar

from prefect import tags
from prefect.context import TagsContext

F = TypeVar("F", bound=Callable)
_FLOW_RUN_TAGS: ContextVar[frozenset[str]] = ContextVar("squeezenas_flow_run_tags", default=frozenset())


def untagged_task_runs(fn: F) -> F:
    """Decorate a flow's function (under `@flow`): its body runs with no tags in Prefect's context, so
    its task runs carry none; the tags its flow run was created with are kept for `subflow_tags()`."""
    @functools.wraps(fn)
    def body(*args, **kwargs):
        # the ContextVar only through module functions: Prefect's Dask runner pickles a flow's function by value
        # (cloudpickle), and a ContextVar cannot be pickled
        token = _remember(TagsContext.get().current_tags)
        try:
            with TagsContext(current_tags=set()):
                return fn(*args, **kwargs)
        finally:
            _forget(token)
    body.task_runs_untagged = True
    return body  # type: ignore[return-value]


def _remember(tags) -> Token:
    return _FLOW_RUN_TAGS.set(_FLOW_RUN_TAGS.get() | frozenset(tags))


def _forget(token: Token) -> None:
    _FLOW_RUN_TAGS.reset(token)


@contextmanager
def subflow_tags() -> Iterator[None]:
    """Around a subflow's call in an `untagged_task_runs` body: the subflow run gets its parent's tags."""
    with tags(*_FLOW_RUN_TAGS.get()):
        yield
