"""Tasks: write the generated default datasets (each into a temporary folder, then renamed)."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

from prefect import task

from nas_core.data import CityscapesSegmentation, CocoSegmentation, ImageNetFolder, generate_cityscapes, \
    generate_coco, generate_imagenet
from nas_core.io import atomic_write_json
from tasks import processes


def _generate_atomically(root: str, generate: Callable[[Path], dict]) -> dict:
    """Generate into a sibling temp folder and rename it onto `root`: a dataset is whole or absent."""
    root_path = Path(root)
    root_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root_path.name}.", dir=root_path.parent))
    # an interrupted or killed command exits without joining this task's thread: its reaper removes the folder
    processes.reaper().remove_at_exit(tmp)
    try:
        summary = generate(tmp)
        atomic_write_json(tmp / "generated.json", summary)
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
    return _generate_atomically(root, lambda p: generate_cityscapes(p, num_train, num_val, num_extra, size, seed))


@task(name="generate-coco")
def generate_coco_task(root: str, num_train: int, num_val: int, size: tuple[int, int], seed: int) -> dict:
    """COCO 2017 layout: images + instances_{train,val}2017.json."""
    return _generate_atomically(root, lambda p: generate_coco(p, num_train, num_val, size, seed))


@task(name="generate-imagenet")
def generate_imagenet_task(root: str, num_classes: int, train_per_class: int, val_per_class: int, size: int,
                           seed: int) -> dict:
    """ImageNet class folders: train/<wnid>/*.JPEG, val/<wnid>/*.JPEG."""
    return _generate_atomically(root, lambda p: generate_imagenet(p, num_classes, train_per_class, val_per_class,
                                                                  size, seed))


@task(name="check-datasets")
def check_datasets_task(cityscapes: str, coco: str, imagenet: str) -> dict:
    """Verify every file of every split of the configured (real) datasets; a defect raises, naming the file."""
    def checked(dataset) -> int:
        dataset.verify()
        return len(dataset)

    counts = {f"cityscapes.{s}": checked(CityscapesSegmentation(cityscapes, s)) for s in ("train", "val", "coarse_train")}
    for path, reader, name in ((coco, CocoSegmentation, "coco"), (imagenet, ImageNetFolder, "imagenet")):
        if Path(path).exists():
            counts.update({f"{name}.{s}": checked(reader(path, s)) for s in ("train", "val")})
    return counts
