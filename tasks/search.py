"""Task of the search stage: supernet, data and cost matrix from paths and settings, then
`nas_core.search.loop.run_search`, then the stage's outputs, written atomically (rank 0).

Run as `python -m tasks.search ...` it is the torchrun worker: the same search, no Prefect, no MLflow. Across
machines (search.nnodes > 1) only the node whose worker held rank 0 gets the summary back (`search_task`)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from torch.utils.data import DataLoader, Subset

from nas_core.config import SearchParams
from nas_core.cost.macs import read_cost_table
from nas_core.cost.model import CostModel, load_cost_model, model_path
from nas_core.data import EvalTransform, TrainTransform
from nas_core.data.target import target_dataset
from nas_core.engine.distributed import check_shared_storage, gather_objects, init_distributed
from nas_core.io import atomic_torch_save, atomic_write_json, atomic_write_parquet, atomic_write_text, remove_checkpoint
from nas_core.search.data import search_loader, split_dataset
from nas_core.search.loop import evaluate_architecture, run_search, search_config
from nas_core.search.plots import plot_probabilities
from nas_core.search.supernet import build_supernet, resolve_fused
from tasks.dvc_files import METRICS
from tasks.torchrun import Nodes, report_main, reporting_errors, run_torchrun_node, worker_dies_with_launcher

SUPERNET, THETA, HISTORY, PRUNING = "supernet.pt", "theta.parquet", "theta_history.parquet", "pruning_log.csv"
CURVES, PLOT, CHECKPOINTS = "search_curves.csv", "probabilities.png", "checkpoints"


def load_cost(cfg: SearchParams) -> CostModel:
    """What prices the search's architectures: the configured table's column, or (cost_metric
    latency_model) the latency model fitted over it; errors name the file."""
    table = read_cost_table(cfg.cost_table)
    if table["space"].iloc[0] != cfg.space:
        raise ValueError(f"{cfg.cost_table}: a table of the {table['space'].iloc[0]} space, but search.space is "
                         f"{cfg.space}")
    if cfg.cost_metric == "latency_model" and "latency_ms" not in table.columns:
        raise ValueError(f"{cfg.cost_table}: cost_metric latency_model needs a latency table (the latency_table "
                         "stage's), not a MAC table (search.cost_metric)")
    try:
        model = load_cost_model(cfg.cost_table, cfg.cost_metric)
    except ValueError as e:
        raise ValueError(f"{e} (search.cost_metric)") from None
    if model.space != cfg.space:
        raise ValueError(f"{model_path(cfg.cost_table)}: a model of the {model.space} space, but search.space is "
                         f"{cfg.space}")
    return model


def _loaders(cfg: SearchParams, train, rank: int, world: int, device):
    make = lambda ds: search_loader(ds, cfg.batch_size, cfg.seed, cfg.num_workers, rank, world, device)  # noqa: E731
    if cfg.scheme == "fbnet":
        weights, theta = split_dataset(train, cfg.fbnet_split, cfg.seed)
        return make(weights), make(theta), len(train)
    return make(train), None, len(train)


def write_outputs(out: Path, supernet, result, cfg: SearchParams, summary: dict, class_names: tuple[str, ...]
                  ) -> None:
    history = result.history
    atomic_write_parquet(out / THETA, history[history["epoch"] == history["epoch"].max()])
    atomic_write_parquet(out / HISTORY, history)
    atomic_write_text(out / PRUNING, result.pruning_log.to_csv(index=False))
    atomic_write_text(out / CURVES, result.curves.to_csv(index=False))
    atomic_torch_save(out / SUPERNET, {
        "format": "squeezenas.supernet.v1", "space": cfg.space, "num_classes": supernet.num_classes,
        "class_names": list(class_names),
        "live_mask": supernet.live_mask().cpu(), "supernet": {k: v.cpu() for k, v in supernet.state_dict().items()},
        "config": cfg.model_dump(mode="json"), "epochs": int(history["epoch"].max())})
    plot_probabilities(history, out / PLOT, f"search: {cfg.space} space, {cfg.cost_metric}, alpha {cfg.alpha}")
    atomic_write_json(out / METRICS, summary)


def search(cfg: SearchParams, data_root: str, out_dir: str,
           on_epoch_end: Callable[[int, dict], None] | None = None, data_format: str = "cityscapes") -> dict:
    """Run the search on the target dataset (`data_format` at `data_root`: its classes are the supernet's) and
    write the outputs into `out_dir`; returns the summary (rank 0)."""
    info = init_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # every process reads the data and the cost table and resumes from rank 0's checkpoints: across
    # machines, a node without the shared storage fails here, naming the path
    check_shared_storage(info, {"paths.dataset": data_root, "search.cost_table": cfg.cost_table},
                         {"paths.search": out_dir})
    cost = load_cost(cfg)
    train_set = target_dataset(data_format, data_root, "train", TrainTransform(cfg.patch.hw, cfg.scale))
    class_names = tuple(train_set.class_names)
    torch.manual_seed(cfg.seed)  # the supernet's initial weights
    supernet = build_supernet(cfg.space, len(class_names), resolve_fused(cfg.fused, info.device)).to(info.device)
    train, arch, n_train = _loaders(cfg, train_set, info.rank, info.world_size, info.device)
    out = Path(out_dir)
    result = run_search(supernet, train, cost.unary, search_config(cfg), out / CHECKPOINTS, arch_loader=arch,
                        fixed_cost=cost.fixed, pairwise=cost.pairwise,
                        on_epoch_end=on_epoch_end if info.is_main else None)
    # every rank's theta, checked before anything is written
    digests = gather_objects(supernet.theta_fingerprint(), info)
    if len(set(digests)) > 1:
        raise RuntimeError(f"[search] the ranks ended with different theta ({', '.join(d[:12] for d in digests)}); "
                           f"nothing written, {out / CHECKPOINTS} resumes the search")
    if not info.is_main:
        return {}
    val = target_dataset(data_format, data_root, "val", EvalTransform())
    if cfg.eval_images:
        val = Subset(val, range(min(cfg.eval_images, len(val))))
    scores = evaluate_architecture(supernet, result.architecture, DataLoader(val, batch_size=1), class_names)
    final = result.curves.iloc[-1].to_dict()
    summary = {"space": cfg.space, "cost_table": cfg.cost_table, "cost_metric": cfg.cost_metric, "alpha": cfg.alpha,
               "world_size": info.world_size, "nnodes": cfg.nnodes, "theta_sha256_per_rank": digests,
               "train_images": n_train, "val_images": len(val),
               "architecture": list(result.architecture.choices), "resumed_from": result.resumed_from,
               "argmax_class_miou": scores["class_miou"],
               **({"argmax_category_miou": scores["category_miou"]} if "category_miou" in scores else {}),
               **{k: v for k, v in final.items() if k not in ("epoch", "seconds")}, "epochs": int(final["epoch"])}
    write_outputs(out, supernet, result, cfg, summary, class_names)
    # the checkpoint only serves an unfinished run; other configurations' checkpoints stay resumable
    remove_checkpoint(result.checkpoint)
    return summary


@task(name="search", cache_policy=NO_CACHE)
def search_task(cfg: SearchParams, data_root: str, out_dir: str,
                on_epoch_end: Callable[[int, dict], None] | None = None, data_format: str = "cityscapes"
                ) -> dict | None:
    """Search in this process, or with nproc > 1 or nnodes > 1 in torchrun's DDP processes (metrics replayed
    afterwards). Across machines this is one node's share: None where rank 0 ran on another node (that
    node's command has the summary, the outputs are written once, by rank 0)."""
    if cfg.nproc == 1 and cfg.nnodes == 1:
        return search(cfg, data_root, out_dir, on_epoch_end, data_format)
    args = ["--settings", cfg.model_dump_json(), "--data", data_root, "--format", data_format, "--out", out_dir]
    outcome = run_torchrun_node("tasks.search", args, cfg.nproc, "search", Nodes.of(cfg, f"search-{out_dir}"))
    if outcome.code != 0:  # a worker's own error was raised by run_torchrun_node, naming the path
        raise RuntimeError(f"[search] torchrun failed; {Path(out_dir) / CHECKPOINTS} resumes the search")
    if not outcome.main:
        return None
    summary = json.loads((Path(out_dir) / METRICS).read_text())
    if on_epoch_end is not None:
        replay_curves(out_dir, on_epoch_end)
    return summary


def replay_curves(out_dir: str, on_epoch_end: Callable[[int, dict], None]) -> None:
    """The per-epoch metrics of a search that ran in torchrun's processes, from its curves file."""
    import pandas as pd

    for row in pd.read_csv(Path(out_dir) / CURVES).to_dict("records"):
        on_epoch_end(int(row["epoch"]), row)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="torchrun worker of the search stage")
    for name in ("--settings", "--data", "--out"):
        p.add_argument(name, required=True)
    p.add_argument("--format", default="cityscapes")
    a = p.parse_args(argv)
    worker_dies_with_launcher()  # a torchrun killed outright takes its workers with it
    with reporting_errors():
        summary = search(SearchParams.model_validate_json(a.settings), a.data, a.out, data_format=a.format)
    if summary:
        report_main()  # rank 0 wrote the outputs: its node's command logs them
    return 0


if __name__ == "__main__":
    sys.exit(main())
