"""Tasks: write the generated default datasets (each into a temporary folder, then renamed over a folder
that is absent, empty or generated here: never over a real dataset)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from prefect import task

from nas_core.data import (
    CocoSegmentation,
    DatasetError,
    ImageNetFolder,
    generate_cityscapes,
    generate_coco,
    generate_imagenet,
)
from nas_core.data.generate import GENERATED_MARKER, check_replaceable
from nas_core.data.target import check_dataset
from nas_core.io import atomic_write_json, temp_dir
from tasks import processes


def _generate_atomically(root: str, field: str, generate: Callable[[Path], dict]) -> dict:
    """Generate into a sibling temp folder and rename it onto `root`: a dataset is whole or absent."""
    check_replaceable(root, field)
    root_path = Path(root)
    # an interrupted or killed command exits without joining this task's thread: its reaper removes the folder
    tmp = temp_dir(root_path.parent, f".{root_path.name}.", registry=processes.reaper())
    try:
        summary = generate(tmp)
        atomic_write_json(tmp / GENERATED_MARKER, summary)  # the marker, written last
        if root_path.exists():
            shutil.rmtree(root_path)
        tmp.rename(root_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        processes.reaper().forget(tmp)
    return summary


@task(name="generate-cityscapes")
def generate_cityscapes_task(root: str, num_train: int, num_val: int, num_extra: int, size: tuple[int, int],
                             seed: int) -> dict:
    """Cityscapes layout: leftImg8bit + gtFine (train, val) + gtCoarse (train, train_extra)."""
    return _generate_atomically(root, "paths.dataset", lambda p: generate_cityscapes(
        p, num_train, num_val, num_extra, size, seed))


@task(name="generate-coco")
def generate_coco_task(root: str, num_train: int, num_val: int, size: tuple[int, int], seed: int) -> dict:
    """COCO 2017 layout: images + instances_{train,val}2017.json."""
    return _generate_atomically(root, "paths.coco", lambda p: generate_coco(p, num_train, num_val, size, seed))


@task(name="generate-imagenet")
def generate_imagenet_task(root: str, num_classes: int, train_per_class: int, val_per_class: int, size: int,
                           seed: int) -> dict:
    """ImageNet class folders: train/<wnid>/*.JPEG, val/<wnid>/*.JPEG."""
    return _generate_atomically(root, "paths.imagenet", lambda p: generate_imagenet(
        p, num_classes, train_per_class, val_per_class, size, seed))


@task(name="check-datasets")
def check_datasets_task(datasets: dict[str, str], target_format: str = "cityscapes") -> dict:
    """Verify every file of every split of the given (real) datasets, {paths field: root}; a defect raises, naming
    the file (the target's: every defect, as `squeezenas dataset check` lists them)."""
    readers = {"coco": (CocoSegmentation, ("train", "val")), "imagenet": (ImageNetFolder, ("train", "val"))}
    counts = {}
    for name, root in datasets.items():
        if name == "dataset":
            summary, problems = check_dataset(target_format, root)
            if problems:
                raise DatasetError(f"{len(problems)} problem(s) in {root} (squeezenas dataset check {root} "
                                   f"--format {target_format} lists them): " + "; ".join(problems))
            counts.update({f"{target_format}.{split}": n for split, n in summary["splits"].items()})
            continue
        reader, splits = readers[name]
        for split in splits:
            dataset = reader(root, split)
            dataset.verify()
            counts[f"{name}.{split}"] = len(dataset)
    return counts
