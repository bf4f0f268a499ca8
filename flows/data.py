"""Flow for the DVC stage `data`: the generated default datasets in the real datasets' formats
(paper section 5.3: Cityscapes fine/coarse, COCO, ImageNet), or a check of the real ones."""
from __future__ import annotations

from prefect import flow

from flows.runners import ThreadRunner
from nas_core.config import load_params
from tasks import tracking
from tasks.data import check_datasets_task, generate_cityscapes_task, generate_coco_task, generate_imagenet_task


@flow(name="data", task_runner=ThreadRunner())
def data_flow(params_file: str = "params.yaml", overrides: tuple[str, ...] = ()) -> dict:
    params = load_params(params_file, overrides)
    cfg, paths = params.data, params.paths
    if not cfg.generate:
        counts = check_datasets_task(paths.cityscapes, paths.coco, paths.imagenet)
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
        for name, path in (("cityscapes", paths.cityscapes), ("coco", paths.coco), ("imagenet", paths.imagenet)):
            tracking.log_dataset(path, name, summaries[name])
    print(f"[data] written: {paths.cityscapes}, {paths.coco}, {paths.imagenet}")
    return summaries
