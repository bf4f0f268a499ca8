"""How a stage fans its tasks out (sampling evaluations, profiling jobs): threads in this process,
or a Dask cluster through prefect-dask."""
from __future__ import annotations


def make_task_runner(cfg, workers: int | None = None, section: str = "sample"):
    """Threads by default; a Dask cluster (local, or at `cfg.dask_address`) through prefect-dask.

    Args:
        cfg: a params section with `runner` and `dask_address` (sample, latency).
        workers: parallel tasks (threads, or local Dask worker processes); default `cfg.workers`.
        section: the section's name, for the error message.
    """
    workers = workers or cfg.workers
    if cfg.runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ValueError(f"{section}.runner: 'dask' needs prefect-dask (pip install -e '.[dask]'), "
                         f"or set {section}.runner: threads") from None
    if cfg.dask_address:
        return DaskTaskRunner(address=cfg.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True})
