"""COCO instance annotations as Cityscapes-class semantic masks, for the COCO segmentation stage (Sec. 5.3.2).
Layout: <root>/annotations/instances_<split>2017.json and <root>/<split>2017/<file_name>.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from nas_core.data.files import DatasetError, read_rgb
from nas_core.data.labels import IGNORE_INDEX, TRAIN_ID_NAMES
from nas_core.data.transforms import EvalTransform

# COCO 2017 category id -> (COCO name, Cityscapes class). COCO has no rider, wall, road, ... and its
# 'stop sign' is the only sign class, so it stands in for 'traffic sign'. Every other category is ignored.
COCO_TO_CITYSCAPES: dict[int, tuple[str, str]] = {
    1: ("person", "person"),
    2: ("bicycle", "bicycle"),
    3: ("car", "car"),
    4: ("motorcycle", "motorcycle"),
    6: ("bus", "bus"),
    7: ("train", "train"),
    8: ("truck", "truck"),
    10: ("traffic light", "traffic light"),
    13: ("stop sign", "traffic sign"),
}
COCO_TO_TRAIN_ID = {coco_id: TRAIN_ID_NAMES.index(name) for coco_id, (_, name) in COCO_TO_CITYSCAPES.items()}
SPLITS = ("train", "val")


def annotation_mask(segmentation, height: int, width: int) -> np.ndarray:
    """Decode one COCO segmentation (polygons, uncompressed or compressed RLE) to an (H, W) bool mask."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)


def semantic_mask(annotations: list[dict], height: int, width: int) -> np.ndarray:
    """Train-id mask of one image: mapped categories keep their class, everything else is 255.

    A pixel claimed by two non-crowd instances (of any category) is ambiguous and becomes 255, as do
    crowd regions, so no occlusion order has to be guessed.
    """
    label = np.full((height, width), IGNORE_INDEX, dtype=np.uint8)
    claims = np.zeros((height, width), dtype=np.uint8)
    crowd = np.zeros((height, width), dtype=bool)
    for annotation in annotations:
        mask = annotation_mask(annotation["segmentation"], height, width)
        if annotation.get("iscrowd", 0):
            crowd |= mask
            continue
        claims += mask
        label[mask] = COCO_TO_TRAIN_ID.get(annotation["category_id"], IGNORE_INDEX)
    label[(claims > 1) | crowd] = IGNORE_INDEX
    return label


def _load_index(json_path: Path) -> tuple[list[dict], dict[int, list[dict]]]:
    if not json_path.is_file():
        raise DatasetError(f"missing annotation file {json_path}")
    try:
        data = json.loads(json_path.read_text())
        images, annotations, categories = data["images"], data["annotations"], data["categories"]
    except (ValueError, KeyError, TypeError) as error:
        raise DatasetError(f"{json_path}: not a COCO instances file ({error!r})") from error
    names = {category["id"]: category["name"] for category in categories}
    for coco_id, (name, _) in COCO_TO_CITYSCAPES.items():
        if coco_id in names and names[coco_id] != name:
            raise DatasetError(f"{json_path}: category {coco_id} is {names[coco_id]!r}, COCO 2017 calls it {name!r}")
    by_image: dict[int, list[dict]] = {image["id"]: [] for image in images}
    for annotation in annotations:
        if annotation["image_id"] not in by_image:
            raise DatasetError(f"{json_path}: annotation {annotation['id']} refers to unknown image "
                               f"{annotation['image_id']}")
        if annotation["category_id"] not in names:
            raise DatasetError(f"{json_path}: annotation {annotation['id']} has unknown category "
                               f"{annotation['category_id']}")
        by_image[annotation["image_id"]].append(annotation)
    return sorted(images, key=lambda image: image["id"]), by_image


class CocoSegmentation(Dataset):
    """Map-style dataset of (normalized image (3, H, W) float, train-id label (H, W) long) from COCO instances.

    Args:
        root: folder holding annotations/ and <split>2017/.
        split: 'train' or 'val'.
        transform: called as transform(image (H, W, 3) uint8, train ids (H, W) uint8); defaults to `EvalTransform()`.
    """

    class_names = TRAIN_ID_NAMES  # COCO's categories mapped onto the Cityscapes classes

    def __init__(self, root: str | Path, split: str, transform: Callable | None = None) -> None:
        if split not in SPLITS:
            raise DatasetError(f"unknown COCO split {split!r}; expected one of {SPLITS}")
        self.root = Path(root)
        self.transform = transform if transform is not None else EvalTransform()
        self.json_path = self.root / "annotations" / f"instances_{split}2017.json"
        image_dir = self.root / f"{split}2017"
        if not image_dir.is_dir():
            raise DatasetError(f"missing split folder {image_dir}")
        self.images, self._annotations = _load_index(self.json_path)
        if not self.images:
            raise DatasetError(f"empty split {split!r}: {self.json_path} lists no images")
        self.files = [image_dir / image["file_name"] for image in self.images]
        missing = [path for path in self.files if not path.is_file()]
        if missing:
            raise DatasetError(f"image {missing[0]} listed in {self.json_path} does not exist")

    def __len__(self) -> int:
        return len(self.images)

    def label(self, index: int) -> np.ndarray:
        """The (H, W) uint8 train-id mask of image `index`."""
        info = self.images[index]
        try:
            return semantic_mask(self._annotations[info["id"]], info["height"], info["width"])
        except (ValueError, TypeError, KeyError) as error:  # pycocotools rejects malformed polygons with these
            raise DatasetError(f"{self.json_path}: bad segmentation for image {self.files[index]} "
                               f"({error!r})") from error

    def _pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image = read_rgb(self.files[index])
        info = self.images[index]
        if image.shape[:2] != (info["height"], info["width"]):
            raise DatasetError(f"image {self.files[index]} is {image.shape[1]}x{image.shape[0]} but "
                               f"{self.json_path} says {info['width']}x{info['height']}")
        return image, self.label(index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(*self._pair(index))

    def verify(self) -> int:
        """Decode every image and mask now (readability, sizes, segmentations); returns the count."""
        for index in range(len(self)):
            self._pair(index)
        return len(self)
