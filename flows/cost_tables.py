"""Flow for the DVC stage `cost_tables`: MAC/parameter tables of the configured spaces
(paper section 5.1), logged to MLflow. The pattern every later stage follows."""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.runners import ThreadRunner
from nas_core.config import load_params
from nas_core.data.target import target_classes
from nas_core.io import atomic_write_json
from tasks import tracking
from tasks.cost_tables import build_cost_table_task
from tasks.flowruns import untagged_task_runs


def write_published_cards(networks_dir: str) -> list[Path]:
    """<networks>/<name>.json for each published network: the references the experiments' choice rules
    read (section 5.3.1), beside the cards select writes for the experiments' own choices."""
    from nas_core.space.zoo import PUBLISHED

    paths = []
    for name, arch in PUBLISHED.items():
        paths.append(Path(networks_dir) / f"{name}.json")
        arch.save(paths[-1])
    return paths


@flow(name="cost-tables", task_runner=ThreadRunner())
@untagged_task_runs
def cost_tables_flow(params_file: str = "params.yaml", overrides: tuple[str, ...] = ()) -> dict:
    params = load_params(params_file, overrides)
    cfg, out_dir = params.cost_tables, params.paths.cost_tables
    # the decoder's last layer has the target dataset's classes (Cityscapes: 19; folder: classes.yaml's)
    num_classes = len(target_classes(params.data.format, params.paths.dataset))
    futures = {s: build_cost_table_task.submit(s, cfg.input_size.hw, num_classes, out_dir) for s in cfg.spaces}
    summaries = {s: f.result() for s, f in futures.items()}
    metrics = {f"{space}.{k}": v for space, s in summaries.items() for k, v in s.items() if k not in ("path", "rows")}
    summary_path = Path(params.paths.metrics) / "cost_tables.json"
    atomic_write_json(summary_path, summaries)
    cards = write_published_cards(params.paths.networks)

    with tracking.stage_run(params.tracking, "cost_tables", params={**cfg.model_dump(mode="json"),
                                                                    "num_classes": num_classes}):
        tracking.log_metrics(metrics)
        for s in summaries.values():
            tracking.log_artifact(s["path"], "cost_tables")
        tracking.log_artifact(summary_path, "cost_tables")
        for card in cards:
            tracking.log_artifact(card, "networks")
    for space, s in summaries.items():
        print(f"[cost_tables] {space}: {s['rows']} rows, network MACs {s['macs_min'] / 1e9:.2f}-"
              f"{s['macs_max'] / 1e9:.2f} G -> {s['path']}")
    return summaries
