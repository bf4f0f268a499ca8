"""Tasks of the `sample` stage (paper section 5.3.1): draw architectures, evaluate each path through
the supernet, attach the cost-table costs, keep a resumable log of finished evaluations."""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from torch.utils.data import DataLoader, Subset

from nas_core.cost.macs import architecture_cost, read_cost_table
from nas_core.cost.model import model_path, read_model
from nas_core.data.target import target_classes, target_dataset
from nas_core.io import atomic_write_parquet, atomic_write_text
from nas_core.select.pareto import architecture_reference_cost, choose, pareto_front, reference_cost
from nas_core.select.sampling import evaluate_path, load_supernet, read_probabilities, sample_architectures
from nas_core.space.spaces import Architecture
from nas_core.space.zoo import PUBLISHED
from tasks.profile import latency_table_path

# the sample stage's outputs, then the select stage's
PARTIAL_NAME, SAMPLES, SAMPLE_METRICS = "partial_evaluations.jsonl", "samples.parquet", "sample_metrics.json"
FRONTS, PLOTS = "fronts", "plots"  # and CHOSEN_ARCHITECTURE, SELECT_METRICS (tasks/dvc_files.py)
EVAL_KEYS = ("bn_recalibration_batches", "batch_size", "val_images", "seed")  # what a path's mIoU depends on


def evaluation_settings(cfg, data_format: str = "cityscapes") -> dict:
    """The adapter from params.yaml's `sample` section (nas_core.config.SampleParams, which holds the defaults
    and checks) to how every path is evaluated: EVAL_KEYS, the in-memory cache's size and the dataset's format."""
    return {**{k: getattr(cfg, k) for k in EVAL_KEYS}, "val_cache_mb": cfg.val_cache_mb, "format": data_format}

# One supernet and one set of image batches per (process, device), shared by the evaluation
# threads: tasks receive paths, and loading 200 times would cost more than evaluating.
_CACHE: dict[tuple, object] = {}
_LOCK = threading.Lock()


def _cached(key: tuple, build):
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = build()
        return _CACHE[key]


def _file_key(path: str | Path) -> tuple:
    st = Path(path).stat()
    return (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def cached_supernet(path: str, device: str = "cpu"):
    return _cached(("supernet", _file_key(path), device), lambda: load_supernet(path, device))


def _batches(fmt: str, root: str, split: str, count: int, batch_size: int, seed: int, cache_mb: int,
             shuffle: bool):
    """(images, labels) batches of the first `count` images (0: all) of a split of the target dataset, in
    memory when they fit in `cache_mb`, else re-read on every pass."""
    dataset = target_dataset(fmt, root, split)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist() if shuffle \
        else list(range(len(dataset)))
    dataset = Subset(dataset, order[:count] if count else order)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    image, label = dataset[0]
    megabytes = len(dataset) * (image.numel() * image.element_size() + label.numel()) / 2 ** 20
    if megabytes > cache_mb:
        return loader
    # labels as uint8 (255 = ignore fits): the confusion matrix widens them itself
    return [(x, y.to(torch.uint8)) for x, y in loader]


def cached_batches(fmt: str, root: str, split: str, count: int, batch_size: int, seed: int, cache_mb: int,
                   shuffle: bool):
    key = ("batches", fmt, str(Path(root).resolve()), split, count, batch_size, seed, cache_mb, shuffle)
    return _cached(key, lambda: _batches(fmt, root, split, count, batch_size, seed, cache_mb, shuffle))


def data_fingerprint(root: str | Path) -> str:
    """Names, sizes and modification times of the dataset's files (cheap; regeneration changes it)."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def evaluation_fingerprint(supernet_path: str, data_root: str, eval_cfg: dict) -> str:
    """What an evaluation's result depends on: the supernet's bytes, the data, the settings."""
    h = hashlib.sha256()
    with open(supernet_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    h.update(data_fingerprint(data_root).encode())
    settings = {k: eval_cfg[k] for k in EVAL_KEYS}
    if not settings["bn_recalibration_batches"]:  # the seed only orders the recalibration batches
        settings.pop("seed")
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:16]


def read_log(path: str | Path) -> list[dict]:
    """Every row of the evaluation log, whichever supernet, data and settings it was evaluated with."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{n}: not a JSON line (delete the file to start the evaluations afresh)") from None
    return rows


def read_partial(path: str | Path, fingerprint: str) -> dict[str, dict]:
    """Finished evaluations of this fingerprint, by architecture key."""
    return {row["choices"]: row for row in read_log(path) if row.get("fingerprint") == fingerprint}


def append_partial(path: str | Path, row: dict) -> None:
    """Add one finished evaluation to the log, keeping every other row (other fingerprints included:
    going back to an earlier supernet reuses its evaluations). The log is rewritten atomically, so a
    run killed at any moment leaves every finished row readable."""
    rows = [*read_log(path), row]
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


@task(name="draw-architectures", cache_policy=NO_CACHE)
def draw_task(supernet_path: str, theta_path: str, num: int, seed: int) -> dict:
    """Draw `num` distinct architectures from theta.parquet's distribution, the argmax first."""
    supernet = cached_supernet(supernet_path)
    probs = read_probabilities(theta_path, len(supernet.blocks))
    pruned = ~supernet.live_mask().cpu().numpy()
    if (probs[pruned] > 0).any():
        raise ValueError(f"{theta_path}: gives probability to candidates pruned from {supernet_path}; "
                         "the two files come from different searches")
    s = sample_architectures(probs, supernet.space.name, num, seed)
    return {"space": supernet.space.name, "num_classes": supernet.num_classes,
            "choices": [list(a.choices) for a in s.architectures], "log_probs": list(s.log_probs),
            "draws": s.draws, "duplicates": s.duplicates, "support": s.support, "exhausted": s.exhausted}


@task(name="evaluate-architecture", task_run_name="evaluate-{index}", cache_policy=NO_CACHE)
def evaluate_task(index: int, space: str, choices: list[str], supernet_path: str, data_root: str,
                  eval_cfg: dict, device: str = "cpu", torch_threads: int = 1) -> dict:
    """mIoU of one sampled path through the supernet on the val split (one result row)."""
    if torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)  # workers x threads <= cores
    tic = time.perf_counter()
    supernet = cached_supernet(supernet_path, device)
    batch, seed, cache_mb, fmt = eval_cfg["batch_size"], eval_cfg["seed"], eval_cfg["val_cache_mb"], eval_cfg["format"]
    val = cached_batches(fmt, data_root, "val", eval_cfg["val_images"], batch, seed, cache_mb, False)
    bn = None
    if eval_cfg["bn_recalibration_batches"]:
        bn = cached_batches(fmt, data_root, "train", eval_cfg["bn_recalibration_batches"] * batch, batch, seed,
                            cache_mb, True)
    names = target_classes(fmt, data_root).names
    if len(names) != supernet.num_classes:
        raise ValueError(f"{supernet_path}: a supernet of {supernet.num_classes} classes, but the dataset {data_root} "
                         f"has {len(names)}: rerun the search on this dataset")
    scores = evaluate_path(supernet, Architecture(space, choices), val, supernet.num_classes, bn, names)
    return {"sample": index, "choices": ",".join(choices), "class_miou": scores["class_miou"],
            "category_miou": scores.get("category_miou", float("nan")), "class_iou": scores["class_iou"],
            "pixels": scores["pixels"], "images": scores["images"], "bn_images": scores["bn_images"],
            "seconds": time.perf_counter() - tic, "device": device, "pid": os.getpid()}


def cost_table_paths(cost_tables_dir: str, latency_dir: str, space: str) -> dict[str, Path]:
    """Where each cost kind's table lives (macs and params share the MAC table)."""
    macs, latency = Path(cost_tables_dir) / f"macs_{space}.parquet", latency_table_path(latency_dir, space)
    return {"macs": macs, "params": macs, "latency_ms": latency, "latency_model": latency}


@task(name="write-samples")
def write_samples_task(rows: list[dict], space: str, table_paths: dict[str, str], path: str,
                       metadata: dict) -> dict:
    """Attach each architecture's cost from every available table and write samples.parquet."""
    df = pd.DataFrame(rows).sort_values("sample").reset_index(drop=True)
    archs = [Architecture(space, c.split(",")) for c in df["choices"]]
    tables, found = {}, {}
    for kind, table_path in table_paths.items():
        source = model_path(table_path) if kind == "latency_model" else Path(table_path)
        if not source.is_file():
            continue
        if table_path not in tables:
            tables[table_path] = read_cost_table(table_path)
        if kind == "latency_model":  # the latency_table stage's model over the table
            model = read_model(source)
            df[kind] = [model.predict(a) for a in archs]
        else:
            df[kind] = [architecture_cost(tables[table_path], a, kind) for a in archs]
        found[kind] = str(source)
    macs_table = tables.get(table_paths.get("macs"))
    if macs_table is not None:  # what the select stage needs to cost a reference network the same way
        metadata = {**metadata, "input_h": int(macs_table["input_h"].iloc[0]),
                    "input_w": int(macs_table["input_w"].iloc[0]),
                    "table_num_classes": int(macs_table["num_classes"].iloc[0])}
    df["is_argmax"] = df["sample"] == 0
    df["space"] = space
    first = ["sample", "is_argmax", "space", "choices", "log_prob", "class_miou", "category_miou", *found]
    df = df[first + sorted(c for c in df.columns if c not in first)]  # one order, whichever rows were resumed
    meta = {**metadata, "cost_kinds": ",".join(found)}
    atomic_write_parquet(path, df, {f"squeezenas.{k}": v for k, v in meta.items()})
    return found


def read_samples(path: str | Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """samples.parquet and its metadata (space, cost_kinds, input size, ...); errors name the file."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: samples table not found (run `squeezenas sample` first)")
    table = pq.read_table(path)
    meta = {k.decode()[len("squeezenas."):]: v.decode() for k, v in (table.schema.metadata or {}).items()
            if k.startswith(b"squeezenas.")}
    df = table.to_pandas()
    missing = {"sample", "choices", "class_miou", "space"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    return df, meta


@task(name="resolve-target")
def resolve_target_task(metric: str, reference: str | None, target: float | None, space: str,
                        input_hw: tuple[int, int], num_classes: int, latency_dir: str) -> tuple[float, str]:
    """The target cost (or budget) in table units: a number, or the cost of a reference network."""
    if target is not None:
        return float(target), f"target {target:.4g}"
    name = reference.format(space=space)
    latency_table = latency_table_path(latency_dir, PUBLISHED[name].space if name in PUBLISHED else space)
    return reference_cost(metric, reference, space, input_hw, num_classes, latency_table), name


@task(name="card-target")
def card_target_task(metric: str, card: str, input_hw: tuple[int, int], num_classes: int,
                     latency_dir: str) -> tuple[float, str]:
    """The cost of the network on a card (<paths.networks>/<name>.json), the target or budget of an
    experiment's choice: MACs/params analytic at the samples' input size, latency from the table of
    its space (the same table the experiment's samples are costed with)."""
    if not Path(card).is_file():
        raise FileNotFoundError(f"{card}: no network card (the cost_tables stage writes the published ones, the "
                                "select stage of an experiment its choice)")
    arch = Architecture.load(card)
    cost = architecture_reference_cost(metric, arch, input_hw, num_classes, latency_table_path(latency_dir, arch.space))
    return cost, Path(card).stem


@task(name="write-fronts")
def fronts_task(samples_path: str, fronts_dir: str) -> dict[str, list[int]]:
    """front_<cost>.csv per cost kind: the non-dominated samples by cost (DVC plots: x=cost, y=class_miou)."""
    df, meta = read_samples(samples_path)
    fronts = {}
    for kind in filter(None, meta.get("cost_kinds", "").split(",")):
        mask = pareto_front(df[kind].to_numpy(), df["class_miou"].to_numpy())
        front = df[mask].sort_values([kind, "sample"])
        table = pd.DataFrame({"sample": front["sample"], "cost": front[kind], "class_miou": front["class_miou"],
                              "choices": front["choices"]})
        atomic_write_text(Path(fronts_dir) / f"front_{kind}.csv", table.to_csv(index=False))
        fronts[kind] = front["sample"].tolist()
    return fronts


@task(name="choose-architecture")
def choose_task(samples_path: str, rule: str, metric: str, target: float, out_path: str,
                if_none_under: str = "fail") -> dict:
    """Apply the choice rule on the (metric, class mIoU) front; write the Architecture JSON. With
    best_under_budget and no sample under the budget, `if_none_under` 'cheapest' takes the cheapest
    sample (budget_met false in the result) instead of failing."""
    df, meta = read_samples(samples_path)
    if metric not in df.columns:
        raise ValueError(f"sample.choice.metric: {samples_path} has no {metric!r} costs "
                         f"(cost kinds found: {meta.get('cost_kinds') or 'none'})")
    cost, score = df[metric].to_numpy(), df["class_miou"].to_numpy()
    budget_met = rule != "best_under_budget" or bool((cost <= target).any())
    if not budget_met and if_none_under == "cheapest":
        print(f"[select] no sample's {metric} is <= {target:.4g} (cheapest {np.nanmin(cost):.4g}): taking the cheapest")
    i = choose(rule, cost, score, target, if_none_under=if_none_under)
    row = df.iloc[i]
    arch = Architecture(row["space"], row["choices"].split(","))
    arch.save(out_path)
    return {"sample": int(row["sample"]), "class_miou": float(row["class_miou"]), "space": arch.space,
            "choices": list(arch.choices), "budget_met": budget_met,
            **{k: float(row[k]) for k in ("macs", "params", "latency_ms", "latency_model") if k in df}}


@task(name="plot-samples")
def plots_task(samples_path: str, chosen: int, metric: str, target: float, target_label: str,
               plots_dir: str) -> list[str]:
    """pareto_<cost>.png per cost kind and architecture.png (the choice beside the published networks)."""
    from nas_core.select.diagrams import plot_architectures, plot_pareto
    df, meta = read_samples(samples_path)
    written = []
    pos = int(df.index[df["sample"] == chosen][0])
    for kind in filter(None, meta.get("cost_kinds", "").split(",")):
        cost, score = df[kind].to_numpy(), df["class_miou"].to_numpy()
        path = Path(plots_dir) / f"pareto_{kind}.png"
        plot_pareto(cost, score, pareto_front(cost, score), pos, path, metric=kind, argmax=0,
                    target=target if kind == metric else None, target_label=target_label)
        written.append(str(path))
    space = df["space"].iloc[0]
    rows = [(f"chosen (sample {chosen})", Architecture(space, df["choices"].iloc[pos].split(",")))]
    rows += [(name, arch) for name, arch in PUBLISHED.items() if arch.space == space]
    path = Path(plots_dir) / "architecture.png"
    plot_architectures(rows, path, title=f"chosen {space} architecture beside the published ones, "
                                         "aligned at the downsampling blocks")
    return written + [str(path)]
