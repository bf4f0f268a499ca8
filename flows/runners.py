"""How a stage fans its tasks out (sampling evaluations, profiling jobs): threads in this process,
or a Dask cluster through prefect-dask."""
from __future__ import annotations

from prefect.task_runners import ThreadPoolTaskRunner

from tasks import processes


class ThreadRunner(ThreadPoolTaskRunner):
    """Prefect's thread pool, except that an interrupted flow (Ctrl-C, SIGTERM) does not wait for its
    running tasks: Prefect's joins their threads at the flow's exit, so a Ctrl-C during minutes of
    data generation waited minutes. The command then exits at once (tasks/processes.exit_now), which
    ends the threads; the reaper removes the temporary folders they were writing."""

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None and processes.signal_of(exc) is not None and self._executor is not None:
            for event in self._cancel_events.values():
                event.set()
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        super().__exit__(exc_type, exc, tb)


def make_task_runner(cfg, workers: int | None = None, section: str = "sample"):
    """Threads by default; a Dask cluster (local, or at `cfg.dask_address`) through prefect-dask.

    Args:
        cfg: a params section with `runner` and `dask_address` (sample, latency).
        workers: parallel tasks (threads, or local Dask worker processes); default `cfg.workers`.
        section: the section's name, for the error message.
    """
    workers = workers or cfg.workers
    if cfg.runner == "threads":
        return ThreadRunner(max_workers=workers)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ValueError(f"{section}.runner: 'dask' needs prefect-dask (pip install -e '.[dask]'), "
                         f"or set {section}.runner: threads") from None
    if cfg.dask_address:
        return DaskTaskRunner(address=cfg.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True})
