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
    """With data.generate on, refuse (before anything is written) every dataset path holding a folder the
    pipeline did not generate: it may be a real dataset, and generating replaces the folder."""
    if not params.data.generate:
        return
    problems = []
    for field in ("cityscapes", "coco", "imagenet"):
        try:
            check_replaceable(getattr(params.paths, field), f"paths.{field}")
        except ForeignFolderError as e:
            problems.append(str(e))
    if problems:
        raise ForeignFolderError("; ".join(problems))


@flow(name="data", task_runner=ThreadRunner())
@untagged_task_runs
def data_flow(params_file: str = "params.yaml", overrides: tuple[str, ...] = ()) -> dict:
    params = load_params(params_file, overrides)
    cfg, paths = params.data, params.paths
    datasets = (("cityscapes", paths.cityscapes), ("coco", paths.coco), ("imagenet", paths.imagenet))
    refuse_foreign_folders(params)
    if not cfg.generate:
        missing = missing_datasets(params)
        if missing:
            raise DatasetError("; ".join(missing))
        counts = check_datasets_task(params.datasets())
        # a run for real datasets too: it holds their md5s, and the runs that read them link to it
        with tracking.stage_run(params.tracking, "data", params=cfg.model_dump(mode="json"),
                                tags={"squeezenas.datasets": "real"}):
            for name, path in datasets:
                if Path(path).is_dir():
                    tracking.log_dataset(path, name, {k: v for k, v in counts.items() if k.startswith(name + ".")})
        print(f"[data] real datasets checked: {counts}")
        return counts
    print(f"[data] generating Cityscapes ({cfg.cityscapes_train}+{cfg.cityscapes_val}+{cfg.cityscapes_extra} images "
          f"at {cfg.cityscapes_size.height}x{cfg.cityscapes_size.width}), COCO and ImageNet-format sets")
    futures = {
        "cityscapes": generate_cityscapes_task.submit(paths.cityscapes, cfg.cityscapes_train, cfg.cityscapes_val,
                                                      cfg.cityscapes_extra, cfg.cityscapes_size.hw, cfg.seed),
        "coco": generate_coco_task.submit(paths.coco, cfg.coco_train, cfg.coco_val, cfg.coco_size.hw, cfg.seed),
        "imagenet": generate_imagenet_task.submit(paths.imagenet, cfg.imagenet_classes, cfg.imagenet_train_per_class,
                                                  cfg.imagenet_val_per_class, cfg.imagenet_size, cfg.seed),
    }
    summaries = {name: f.result() for name, f in futures.items()}
    with tracking.stage_run(params.tracking, "data", params=cfg.model_dump(mode="json")):
        for name, path in datasets:
            tracking.log_dataset(path, name, summaries[name])
    print(f"[data] written: {paths.cityscapes}, {paths.coco}, {paths.imagenet}")
    return summaries
