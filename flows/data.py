"""Flow for the DVC stage `data`: the generated default datasets in the real datasets' formats
(paper section 5.3: Cityscapes fine/coarse, COCO, ImageNet), or a check of the real ones."""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.runners import ThreadRunner
from nas_core.config import Params, load_params, missing_datasets
from nas_core.data import DatasetError
from nas_core.data.generate import ForeignFolderError, check_replaceable
from tasks import tracking
from tasks.data import check_datasets_task, generate_cityscapes_task, generate_coco_task, generate_imagenet_task
from tasks.flowruns import untagged_task_runs


def refuse_foreign_folders(params: Params) -> None:
    """With data.generate on, refuse (before anything is written) every dataset path the pipeline generates that
    holds a folder the pipeline did not generate: it may be a real dataset, and generating replaces the folder.
    A folder-format target is the user's own: never generated, so never refused here."""
    if not params.data.generate:
        return
    problems = []
    for field in generated_fields(params):
        try:
            check_replaceable(getattr(params.paths, field), f"paths.{field}")
        except ForeignFolderError as e:
            problems.append(str(e))
    if problems:
        raise ForeignFolderError("; ".join(problems))


def generated_fields(params: Params) -> tuple[str, ...]:
    """The paths fields data.generate writes: the Cityscapes-format target (not a folder-format one), COCO, ImageNet."""
    return (("dataset",) if params.data.format == "cityscapes" else ()) + ("coco", "imagenet")


@flow(name="data", task_runner=ThreadRunner())
@untagged_task_runs
def data_flow(params_file: str = "params.yaml", overrides: tuple[str, ...] = ()) -> dict:
    params = load_params(params_file, overrides)
    cfg, paths = params.data, params.paths
    # MLflow's dataset names: the target by its format (cityscapes, folder), then COCO and ImageNet
    datasets = ((cfg.format, paths.dataset), ("coco", paths.coco), ("imagenet", paths.imagenet))
    refuse_foreign_folders(params)
    missing = missing_datasets(params)
    if missing:
        raise DatasetError("; ".join(missing))
    if not cfg.generate:
        counts = check_datasets_task(params.datasets(), cfg.format)
        # a run for real datasets too: it holds their md5s, and the runs that read them link to it
        with tracking.stage_run(params.tracking, "data", params=cfg.model_dump(mode="json"),
                                tags={"squeezenas.datasets": "real"}):
            for name, path in datasets:
                if Path(path).is_dir():
                    tracking.log_dataset(path, name, {k: v for k, v in counts.items() if k.startswith(name + ".")})
        print(f"[data] real datasets checked: {counts}")
        return counts
    summaries = {}
    if cfg.format == "folder":  # the user's own target: checked (every defect listed) before anything is generated
        summaries["folder"] = check_datasets_task({"dataset": paths.dataset}, cfg.format)
        print(f"[data] folder-format dataset {paths.dataset} checked: {summaries['folder']}")
    else:
        print(f"[data] generating Cityscapes ({cfg.cityscapes_train}+{cfg.cityscapes_val}+{cfg.cityscapes_extra} "
              f"images at {cfg.cityscapes_size.height}x{cfg.cityscapes_size.width})")
    print("[data] generating COCO and ImageNet-format sets")
    futures = {}
    if cfg.format == "cityscapes":
        futures["cityscapes"] = generate_cityscapes_task.submit(
            paths.dataset, cfg.cityscapes_train, cfg.cityscapes_val, cfg.cityscapes_extra, cfg.cityscapes_size.hw,
            cfg.seed)
    futures["coco"] = generate_coco_task.submit(paths.coco, cfg.coco_train, cfg.coco_val, cfg.coco_size.hw, cfg.seed)
    futures["imagenet"] = generate_imagenet_task.submit(paths.imagenet, cfg.imagenet_classes,
                                                        cfg.imagenet_train_per_class, cfg.imagenet_val_per_class,
                                                        cfg.imagenet_size, cfg.seed)
    summaries.update({name: f.result() for name, f in futures.items()})
    with tracking.stage_run(params.tracking, "data", params=cfg.model_dump(mode="json")):
        for name, path in datasets:
            tracking.log_dataset(path, name, summaries[name])
    print(f"[data] written: {', '.join(getattr(paths, f) for f in generated_fields(params))}")
    return summaries
