"""Flow of the DVC stage `report`: the paper's experiment gathered (Table 1, Figures 5-6). Every row -
the experiments' networks, the six published networks (the authors' weights where released) and
MobileNetV3-Small/-Large - is timed in one interleaved session on the same target with the same
protocol; then the per-space comparison of the latency network with the MAC network (sections 5.1-5.4)."""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from nas_core.config import load_params
from nas_core.cost.factory import device_name
from nas_core.data.target import target_classes
from nas_core.report.table1 import compare_spaces, figure, load_paper_figures, table_row, write_table1
from tasks import tracking
from tasks.flowruns import untagged_task_runs
from tasks.report import REFERENCE_NETWORKS, experiment_row_task, reference_row_task, time_networks_task

FIGURE5, FIGURE6 = "figure5_macs_vs_miou.png", "figure6_latency_vs_miou.png"
PAPER_FIGURES = "reference/paper_figures.json"


def report_target(params):
    """The benchmark's target with the report's interleaving: 'local' (onnxruntime on this machine) or
    'profiling' (the latency stage's device and protocol)."""
    from nas_core.cost.factory import build_target
    from nas_core.report.benchmark import local_target

    cfg = params.benchmark
    if cfg.target == "local":
        return local_target(cfg.threads, cfg.warmup, cfg.runs, cfg.rounds, cfg.optimization), \
            f"local:{device_name(params.latency)} (onnxruntime CPU, optimization {cfg.optimization}, {cfg.threads} " \
            f"thread(s), {cfg.rounds} rounds of {cfg.runs} runs, interleaved)"
    lat = params.latency
    return build_target(lat), f"{lat.target}:{device_name(lat)} ({lat.backend}, {lat.runs}+ runs)"


def budget_notes(rows: list[dict]) -> list[str]:
    """One note per experiment whose choice found no sample under its budget (select took the cheapest);
    `rows`' choice is the one benchmark@NAME copied from select_metrics.json."""
    notes = []
    for row in rows:
        name, chosen = row["network"], row.get("choice") or {}
        if chosen.get("budget_met") is False:
            notes.append(f"{name}: no sample under the budget of {chosen['reference']} ({chosen['metric']} <= "
                         f"{chosen['target']:.4g}); select took the cheapest sample ({chosen['metric']} "
                         f"{chosen.get('chosen_' + chosen['metric'], float('nan')):.4g}): a longer search or more "
                         "samples would give the paper's rule something to choose from")
    return notes


@flow(name="report")
@untagged_task_runs
def report_flow(params_file: str = "params.yaml", overrides: tuple[str, ...] = ()) -> dict:
    params = load_params(params_file, overrides)
    if not params.experiments:
        raise ValueError(f"{params_file}: experiments: none listed; the report gathers the experiments' networks")
    cfg, paths = params.benchmark, params.paths
    out = Path(paths.report)
    rows = []
    for name, exp in params.experiments.items():
        chain = params.for_experiment(name)
        rows.append(experiment_row_task(name, exp.space, exp.objective, chain.paths.benchmark,
                                        str(Path(paths.networks) / f"{name}.json")))
    for name in REFERENCE_NETWORKS:
        rows.append(reference_row_task(name, cfg.weights.get(name), str(out / "onnx"), cfg.input_size.hw,
                                       paths.dataset, cfg.onnx_atol, cfg.threads, params.data.format))
    target, where = report_target(params)
    timed = time_networks_task({r["network"]: r["onnx"] for r in rows}, cfg.input_size.hw, target)
    table = [{**table_row(r["network"], r["kind"], r["space"], r["objective"], r["architecture"], r["weights"],
                          r["class_miou"], timed[r["network"]]["latency_ms"], timed[r["network"]]["latency_p10_ms"],
                          timed[r["network"]]["latency_p90_ms"], r["gmacs"], r["params_m"]),
              "class_iou": r.get("class_iou")} for r in rows]
    classes = target_classes(params.data.format, paths.dataset).names
    comparisons = compare_spaces(table)
    h, w = cfg.input_size.hw
    own = params.data.format == "folder"
    notes = [f"Input 1x3x{h}x{w}, batch 1; every network timed in one interleaved session on {where}.",
             ("class mIoU: the folder-format dataset's validation set" if own else
              "class mIoU: Cityscapes-format validation set") + " at full resolution, no test-time augmentation"
             + (" - here the generated default data, so the mIoU values are not comparable with the paper's"
                if params.data.generate and not own else ""),
             "Published networks without released weights have no mIoU (their MACs, parameters and latency are "
             "measured all the same)."
             + (f" The released weights predict Cityscapes' 19 classes, not this dataset's {len(classes)}: every "
                "reference network here has random weights and a head for the dataset's classes." if own else "")]
    notes += budget_notes(rows)
    written = write_table1(table, comparisons, where, out, load_paper_figures(PAPER_FIGURES), notes, classes)
    fig5 = figure(table, "gmacs", out / FIGURE5, "Figure 5: GMACs vs class mIoU")
    fig6 = figure(table, "latency_ms", out / FIGURE6, f"Figure 6: latency on {where.split(' (')[0]} vs class mIoU")

    with tracking.stage_run(params.tracking, "report", params=cfg.model_dump(mode="json"),
                            tags={"squeezenas.experiments": ",".join(params.experiments)}):
        tracking.log_metrics({f"{r['network']}.{k}": r[k] for r in table
                              for k in ("class_miou", "latency_ms", "gmacs", "params_m") if r.get(k) is not None})
        tracking.log_metrics({k: v for r in table for k, v in tracking.class_iou_metrics(r).items()})
        tracking.log_metrics({f"{c['kind']}.{c['space']}.faster_pct": c["faster_pct"] for c in comparisons})
        for path in (written["json"], written["md"], fig5, fig6):
            tracking.log_artifact(path, "report")
    print(Path(written["md"]).read_text())
    return {"rows": table, "comparison": comparisons, **{k: str(v) for k, v in written.items()}}
