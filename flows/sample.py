"""Flows of the DVC stages `sample` and `select` (paper section 5.3.1): sample K architectures from the
searched distribution, estimate each one's mIoU through the supernet in parallel (resumable), then
choose one from the estimated Pareto front for retraining."""
from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import torch
from prefect import flow
from prefect.futures import as_completed

from flows.runners import make_task_runner
from nas_core.config import load_params
from nas_core.io import atomic_write_json
from nas_core.space.spaces import NUM_CLASSES, Architecture
from tasks import tracking
from tasks.dvc_files import CHOSEN_ARCHITECTURE, SELECT_METRICS
from tasks.flowruns import subflow_tags, untagged_task_runs
from tasks.sample import (
    FRONTS,
    PARTIAL_NAME,
    PLOTS,
    SAMPLE_METRICS,
    SAMPLES,
    append_partial,
    card_target_task,
    choose_task,
    cost_table_paths,
    draw_task,
    evaluate_task,
    evaluation_fingerprint,
    evaluation_settings,
    fronts_task,
    plots_task,
    read_partial,
    read_samples,
    resolve_target_task,
    write_samples_task,
)
from tasks.search import SUPERNET, THETA


def _devices(device: str) -> list[str]:
    """The evaluation devices; with several GPUs the paths are dealt out across them."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("sample.device: 'cuda' was requested but no GPU is visible")
    if device != "cpu" and torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]


@flow(name="evaluate-samples")
@untagged_task_runs
def evaluate_flow(pending: list[tuple[int, list[str]]], space: str, supernet_path: str, data_root: str,
                  eval_cfg: dict, devices: list[str], threads: int, partial_path: str, fingerprint: str) -> list[dict]:
    """Fan the pending paths out over the task runner; each finished row joins the log at once."""
    log_rows = list(read_partial(partial_path, fingerprint).values())
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # the thread runner's workers share this process's intra-op pool
    futures = [evaluate_task.submit(i, space, c, supernet_path, data_root, eval_cfg, devices[k % len(devices)],
                                    threads) for k, (i, c) in enumerate(pending)]
    failures = []
    try:
        for n, future in enumerate(as_completed(futures), 1):
            try:
                row = future.result()
            except Exception as e:  # keep the others; the rerun evaluates only what failed
                failures.append(str(e))
                continue
            log_rows.append({**row, "fingerprint": fingerprint})
            append_partial(partial_path, log_rows[-1])
            print(f"[sample] {n}/{len(pending)}: sample {row['sample']} mIoU {row['class_miou']:.4f} "
                  f"({row['seconds']:.2f} s on {row['device']})")
    finally:
        torch.set_num_threads(previous_threads)
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(pending)} evaluations failed (the others are kept in "
                           f"{partial_path}; rerun to evaluate only the rest); first error: {failures[0]}")
    return log_rows


@flow(name="sample")
@untagged_task_runs
def sample_flow(params_file: str = "params.yaml", overrides: tuple[str, ...] = (),
                experiment: str | None = None) -> dict:
    params = load_params(params_file, overrides, experiment)
    cfg, paths = params.sample, params.paths
    out = Path(paths.samples)
    supernet_path, theta_path = str(Path(paths.search) / SUPERNET), str(Path(paths.search) / THETA)
    tic = time.perf_counter()
    drawn = draw_task(supernet_path, theta_path, cfg.num_samples, cfg.seed)
    space, choices = drawn["space"], drawn["choices"]
    print(f"[sample] {len(choices)} distinct {space} architectures from {drawn['draws']} draws "
          f"({drawn['duplicates']} duplicates redrawn, support {drawn['support']:.3g})"
          + (" - stopped early: the distribution is too peaked for more" if drawn["exhausted"] else ""))

    eval_cfg = evaluation_settings(cfg, params.data.format)
    fingerprint = evaluation_fingerprint(supernet_path, paths.dataset, eval_cfg)
    partial_path = out / PARTIAL_NAME
    done = read_partial(partial_path, fingerprint)
    pending = [(i, c) for i, c in enumerate(choices) if ",".join(c) not in done]
    devices = _devices(cfg.device)
    # workers x threads <= cores: more threads than cores make every op wait on the slowest
    threads = cfg.threads_per_worker or (max(1, (os.cpu_count() or 1) // cfg.workers) if devices == ["cpu"] else 1)
    print(f"[sample] evaluating {len(pending)} paths ({len(choices) - len(pending)} already in {partial_path}) "
          f"with {cfg.workers} {cfg.runner} worker(s) on {', '.join(devices)}, {threads} torch thread(s) each")
    log_rows = list(done.values())
    if pending:
        runner = make_task_runner(cfg)
        with subflow_tags():
            log_rows = evaluate_flow.with_options(task_runner=runner)(
                pending, space, supernet_path, paths.dataset, eval_cfg, devices, threads, str(partial_path),
                fingerprint)
    evaluation_seconds = time.perf_counter() - tic

    by_key = {r["choices"]: r for r in log_rows}
    rows = [{**by_key[",".join(c)], "sample": i, "log_prob": lp}
            for i, (c, lp) in enumerate(zip(choices, drawn["log_probs"]))]
    for r in rows:
        r.pop("fingerprint", None)
    tables = {k: str(p) for k, p in cost_table_paths(paths.cost_tables, paths.latency, space).items() if k in cfg.costs}
    meta = {"space": space, "num_classes": drawn["num_classes"], "seed": cfg.seed, "requested": cfg.num_samples,
            "draws": drawn["draws"], "duplicates": drawn["duplicates"], "fingerprint": fingerprint}
    samples_path = out / SAMPLES
    found = write_samples_task(rows, space, tables, str(samples_path), meta)
    missing = sorted(set(cfg.costs) - set(found))
    if missing:
        print(f"[sample] no cost table for {', '.join(missing)} (looked for {', '.join(tables[k] for k in missing)})")
    mious = [r["class_miou"] for r in rows]
    metrics = {"samples": len(rows), "requested": cfg.num_samples, "draws": drawn["draws"],
               "duplicates": drawn["duplicates"], "evaluated": len(pending), "reused": len(choices) - len(pending),
               "best_class_miou": max(mious), "mean_class_miou": sum(mious) / len(mious),
               "argmax_class_miou": rows[0]["class_miou"], "seconds": evaluation_seconds,
               "cost_kinds": sorted(found)}
    metrics_path = out / SAMPLE_METRICS
    atomic_write_json(metrics_path, metrics)

    logged = cfg.model_dump(mode="json", exclude={"choice"})
    with tracking.stage_run(params.tracking, params.dvc_stage("sample"), params=logged,
                            tags={"squeezenas.space": space}):
        tracking.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        tracking.log_artifact(samples_path, "samples")
        tracking.log_artifact(metrics_path, "samples")
    print(f"[sample] {len(rows)} samples -> {samples_path}: best mIoU {metrics['best_class_miou']:.4f}, "
          f"argmax {metrics['argmax_class_miou']:.4f} ({evaluation_seconds:.1f} s)")
    return metrics


@flow(name="select")
@untagged_task_runs
def select_flow(params_file: str = "params.yaml", overrides: tuple[str, ...] = (),
                experiment: str | None = None) -> dict:
    params = load_params(params_file, overrides, experiment)
    choice, paths = params.sample.choice, params.paths
    out = Path(paths.samples)
    samples_path = str(out / SAMPLES)
    _, meta = read_samples(samples_path)
    space = meta["space"]
    input_hw = (int(meta.get("input_h", 1024)), int(meta.get("input_w", 2048)))
    num_classes = int(meta.get("table_num_classes", meta.get("num_classes", NUM_CLASSES)))
    if params.experiment:  # the paper's rules relative to a network card: published, or another experiment's choice
        choice = params.experiments[params.experiment].choice
        card = Path(paths.networks) / f"{choice.reference}.json"
        target, label = card_target_task(choice.metric, str(card), input_hw, num_classes, paths.latency)
    else:
        target, label = resolve_target_task(choice.metric, choice.reference, choice.target, space, input_hw,
                                            num_classes, paths.latency)
    fronts = fronts_task(samples_path, str(out / FRONTS))
    chosen = choose_task(samples_path, choice.rule, choice.metric, target, str(out / CHOSEN_ARCHITECTURE),
                         getattr(choice, "if_none_under", "fail"))
    if params.experiment:
        Architecture(chosen["space"], chosen["choices"]).save(Path(paths.networks) / f"{params.experiment}.json")
    plots = plots_task(samples_path, chosen["sample"], choice.metric, target, label, str(out / PLOTS))
    metrics = {"chosen_sample": chosen["sample"], "chosen_class_miou": chosen["class_miou"], "target": target,
               **{f"chosen_{k}": chosen[k] for k in ("macs", "params", "latency_ms", "latency_model") if k in chosen},
               **{f"front_size_{k}": len(v) for k, v in fronts.items()}}
    metrics_path = out / SELECT_METRICS
    atomic_write_json(metrics_path, {**metrics, "rule": choice.rule, "metric": choice.metric, "target_label": label,
                                     "reference": choice.reference, "budget_met": chosen["budget_met"],
                                     "choices": chosen["choices"]})
    _prefect_artifacts(out, choice, chosen, fronts, label, plots)

    with tracking.stage_run(params.tracking, params.dvc_stage("select"), params=choice.model_dump(mode="json"),
                            tags={"squeezenas.space": space, "squeezenas.chosen": ",".join(chosen["choices"])}):
        tracking.log_metrics(metrics)
        for path in [*plots, *(out / FRONTS).glob("front_*.csv"), out / CHOSEN_ARCHITECTURE, metrics_path]:
            tracking.log_artifact(path, "select")
    print(f"[select] {choice.rule} on {choice.metric} ({label}: {target:.4g}): sample {chosen['sample']} "
          f"mIoU {chosen['class_miou']:.4f} -> {out / 'chosen_architecture.json'}")
    return {**metrics, "choices": chosen["choices"]}


def _prefect_artifacts(out: Path, choice, chosen: dict, fronts: dict, label: str, plots: list[str]) -> None:
    """A table of the front the choice was made on, and the plots inline (UI only, not the pipeline's state)."""
    import pandas as pd
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    front_csv = out / FRONTS / f"front_{choice.metric}.csv"
    if front_csv.is_file():
        table = pd.read_csv(front_csv)
        create_table_artifact(table.to_dict(orient="records"), key=f"front-{choice.metric.replace('_', '-')}",
                              description=f"estimated Pareto front of {choice.metric} vs class mIoU")
    images = "\n\n".join(f"![{Path(p).stem}](data:image/png;base64,{base64.b64encode(Path(p).read_bytes()).decode()})"
                         for p in plots)
    create_markdown_artifact(
        f"# Chosen architecture\n\nRule `{choice.rule}` on `{choice.metric}` ({label}); sample {chosen['sample']}, "
        f"class mIoU {chosen['class_miou']:.4f}\n\n`{' '.join(chosen['choices'])}`\n\nFront sizes: "
        f"{ {k: len(v) for k, v in fronts.items()} }\n\n{images}\n", key="sample-choice")
