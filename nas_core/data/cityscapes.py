"""Cityscapes semantic segmentation in its official layout (fine train/val, coarse train + train_extra; Sec. 5.3.2):
leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png + gt{Fine,Coarse}/.../*_gt{Fine,Coarse}_labelIds.png.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset

from nas_core.data.files import DatasetError, read_label_pair
from nas_core.data.labels import TRAIN_ID_NAMES
from nas_core.data.transforms import EvalTransform

# split name -> (folders of leftImg8bit it draws from, annotation folder)
SPLITS: dict[str, tuple[tuple[str, ...], str]] = {
    "train": (("train",), "gtFine"),
    "val": (("val",), "gtFine"),
    "coarse_train": (("train", "train_extra"), "gtCoarse"),
}
IMAGE_SUFFIX = "_leftImg8bit.png"
# <city>_<seq>_<frame>: cities may contain '-' (bad-honnef) but never '_',
# exactly as csHelpers.getCsFileInfo splits them
FRAME_RE = re.compile(r"^(?P<city>[^_]+)_(?P<seq>\d+)_(?P<frame>\d+)$")


def _check_split(split: str) -> tuple[tuple[str, ...], str]:
    if split not in SPLITS:
        raise DatasetError(f"unknown Cityscapes split {split!r}; expected one of {sorted(SPLITS)}")
    return SPLITS[split]


def _city_dirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"missing split folder {folder}")
    entries = sorted(folder.iterdir())
    stray = [entry for entry in entries if not entry.is_dir()]
    if stray:
        raise DatasetError(f"unexpected file {stray[0]} in {folder}: only <city> folders belong there")
    return entries


def _frame_id(path: Path, suffix: str) -> str:
    name = path.name
    if not name.endswith(suffix) or not FRAME_RE.match(name[: -len(suffix)]):
        raise DatasetError(f"unexpected file {path}: expected <city>_<seq>_<frame>{suffix}")
    frame = name[: -len(suffix)]
    if not frame.startswith(path.parent.name + "_"):
        raise DatasetError(f"{path}: file name does not start with its city folder {path.parent.name!r}")
    return frame


def _list_frames(folder: Path, suffix: str, others_allowed: bool) -> dict[str, Path]:
    """Map frame ids to files ending in `suffix` under folder/<city>/ (gt folders also hold color/instance PNGs)."""
    frames: dict[str, Path] = {}
    for city in _city_dirs(folder):
        for path in sorted(city.iterdir()):
            if others_allowed and not path.name.endswith(suffix):
                continue
            frames[_frame_id(path, suffix)] = path
    return frames


def list_pairs(root: str | Path, split: str) -> list[tuple[Path, Path]]:
    """All (image, labelIds) pairs of a split, sorted;
    any image without a label or label without an image is an error."""
    image_splits, annotation = _check_split(split)
    root = Path(root)
    pairs: list[tuple[Path, Path]] = []
    for image_split in image_splits:
        images = _list_frames(root / "leftImg8bit" / image_split, IMAGE_SUFFIX, others_allowed=False)
        label_suffix = f"_{annotation}_labelIds.png"
        labels = _list_frames(root / annotation / image_split, label_suffix, others_allowed=True)
        for frame, image_path in images.items():
            if frame not in labels:
                expected = root / annotation / image_split / image_path.parent.name / f"{frame}{label_suffix}"
                raise DatasetError(f"image {image_path} has no label: missing {expected}")
            pairs.append((image_path, labels[frame]))
        orphans = sorted(set(labels) - set(images))
        if orphans:
            raise DatasetError(f"label {labels[orphans[0]]} has no image in {root / 'leftImg8bit' / image_split}")
    if not pairs:
        raise DatasetError(f"empty split {split!r}: no images under {root / 'leftImg8bit'} {list(image_splits)}")
    return pairs


def list_ground_truth(root: str | Path, split: str = "val") -> list[Path]:
    """The gtFine labelIds files the official evaluation scores for `split` ('train' or 'val'), sorted."""
    image_splits, annotation = _check_split(split)
    if annotation != "gtFine":
        raise DatasetError(f"split {split!r} has no fine ground truth to evaluate against")
    folder = Path(root) / annotation / image_splits[0]
    files = sorted(_list_frames(folder, "_gtFine_labelIds.png", others_allowed=True).values())
    if not files:
        raise DatasetError(f"empty split {split!r}: no *_gtFine_labelIds.png under {folder}")
    return files


def frame_id(label_or_image_path: Path) -> str:
    """'<city>_<seq>_<frame>' of any Cityscapes file name, the key that pairs predictions with ground truth."""
    parts = Path(label_or_image_path).name.split("_")
    return "_".join(parts[:3])


class CityscapesSegmentation(Dataset):
    """Map-style dataset of (normalized image (3, H, W) float, train-id label (H, W) long).

    Args:
        root: the Cityscapes root holding leftImg8bit/, gtFine/ and gtCoarse/.
        split: 'train' and 'val' (gtFine) or 'coarse_train' (gtCoarse of train + train_extra).
        transform: called as transform(image (H, W, 3) uint8, train ids (H, W) uint8); defaults to `EvalTransform()`.
    """

    class_names = TRAIN_ID_NAMES

    def __init__(self, root: str | Path, split: str, transform: Callable | None = None) -> None:
        self.root = Path(root)
        self.split = split
        self.transform = transform if transform is not None else EvalTransform()
        self.files = list_pairs(self.root, split)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, train_ids = read_label_pair(*self.files[index])
        return self.transform(image, train_ids)

    def verify(self) -> int:
        """Decode and check every pair now (readability, sizes, label ids) instead of when first loaded;
        returns the count."""
        for pair in self.files:
            read_label_pair(*pair)
        return len(self.files)
