"""Writers of small seeded datasets in the real on-disk formats (Cityscapes, COCO 2017, ImageNet folders).

They are the default inputs of the pipeline; the readers in this package read them unchanged.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from nas_core.data.coco import annotation_mask
from nas_core.data.files import write_png
from nas_core.data.labels import ID_TO_TRAIN_ID, TRAIN_ID_NAMES
from nas_core.data.synthetic import coarsen, paint_street_scene

CITIES = {"train": ("aachen", "bochum", "bremen"), "val": ("frankfurt", "lindau", "munster"),
          "train_extra": ("augsburg", "bad-honnef")}


def _fresh(root: str | Path) -> Path:
    # refusing a non-empty folder keeps stale files of an earlier, larger run out of the dataset
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"refusing to generate into non-empty folder {root}")
    root.mkdir(parents=True, exist_ok=True)
    return root


def generate_cityscapes(root: str | Path, num_train: int = 32, num_val: int = 12, num_extra: int = 8,
                        size: tuple[int, int] = (256, 512), seed: int = 0) -> dict:
    """Write street scenes in the Cityscapes layout: leftImg8bit, gtFine (train, val), gtCoarse (train, train_extra).

    Each frame has its own generator seeded by (seed, split, index), so changing a count keeps the other frames.

    Returns:
        a summary: counts per split, size, seed and the train-id pixel fractions of fine train.
    """
    root = _fresh(root)
    counts = {"train": num_train, "val": num_val, "train_extra": num_extra}
    histogram = np.zeros(256, dtype=np.int64)
    for split_index, (split, count) in enumerate(counts.items()):
        cities = CITIES[split]
        for i in range(count):
            rng = np.random.default_rng([seed, split_index, i])
            city = cities[i % len(cities)]
            frame = f"{city}_{i // len(cities):06d}_000019"
            image, label_ids, instance_ids = paint_street_scene(rng, size)
            write_png(root / "leftImg8bit" / split / city / f"{frame}_leftImg8bit.png", image)
            if split != "train_extra":
                write_png(root / "gtFine" / split / city / f"{frame}_gtFine_labelIds.png", label_ids)
                write_png(root / "gtFine" / split / city / f"{frame}_gtFine_instanceIds.png", instance_ids)
            if split == "train":
                histogram += np.bincount(ID_TO_TRAIN_ID[label_ids].ravel(), minlength=256)
            if split != "val":
                coarse_ids, coarse_instances = coarsen(label_ids, instance_ids, rng)
                write_png(root / "gtCoarse" / split / city / f"{frame}_gtCoarse_labelIds.png", coarse_ids)
                write_png(root / "gtCoarse" / split / city / f"{frame}_gtCoarse_instanceIds.png", coarse_instances)
    fractions = histogram[: len(TRAIN_ID_NAMES)] / max(1, histogram.sum())
    return {"root": str(root), "images": counts, "size": list(size), "seed": seed,
            "train_class_fraction": {name: float(f) for name, f in zip(TRAIN_ID_NAMES, fractions) if f > 0}}


# (COCO 2017 id, name, supercategory, height/width of the box, unit-box polygons, base colour); 18 and 62 are unmapped
_OCTAGON = [(0.5 + 0.5 * math.cos(a), 0.5 + 0.5 * math.sin(a)) for a in np.arange(8) * math.pi / 4 + math.pi / 8]


def _wheel(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in np.arange(10) * math.pi / 5]


_PERSON = [[(0.3, 0.25), (0.7, 0.25), (0.85, 0.55), (0.65, 0.55), (0.65, 1), (0.52, 1), (0.5, 0.65), (0.48, 1),
            (0.35, 1), (0.35, 0.55), (0.15, 0.55)], [(x * 0.3 + 0.35, y * 0.24) for x, y in _OCTAGON]]
COCO_SHAPES = [
    (1, "person", "person", 2.5, _PERSON, (150, 60, 60)),
    (2, "bicycle", "vehicle", 0.6, [_wheel(0.2, 0.7, 0.2), _wheel(0.8, 0.7, 0.2),
                                    [(0.2, 0.7), (0.5, 0.3), (0.8, 0.7), (0.5, 0.75)]], (40, 40, 160)),
    (3, "car", "vehicle", 0.5, [[(0, 0.45), (0.2, 0.45), (0.3, 0.1), (0.75, 0.1), (0.85, 0.45), (1, 0.5), (1, 0.9),
                                 (0, 0.9)]], (170, 40, 40)),
    (4, "motorcycle", "vehicle", 0.6, [_wheel(0.2, 0.75, 0.2), _wheel(0.8, 0.75, 0.2),
                                       [(0.15, 0.6), (0.4, 0.3), (0.75, 0.3), (0.9, 0.6)]], (30, 30, 30)),
    (6, "bus", "vehicle", 0.6, [[(0, 0.05), (1, 0.05), (1, 0.9), (0, 0.9)]], (210, 180, 40)),
    (7, "train", "vehicle", 0.4, [[(0, 0.2), (0.1, 0), (1, 0), (1, 1), (0, 1)]], (90, 110, 140)),
    (8, "truck", "vehicle", 0.6, [[(0, 0), (0.65, 0), (0.65, 0.3), (0.85, 0.3), (1, 0.55), (1, 0.9), (0, 0.9)]],
     (200, 200, 200)),
    (10, "traffic light", "outdoor", 2.5, [[(0.3, 0), (0.7, 0), (0.7, 1), (0.3, 1)]], (50, 60, 50)),
    (13, "stop sign", "outdoor", 1.0, [_OCTAGON], (200, 30, 30)),
    (18, "dog", "animal", 0.7, [[(0, 0.3), (0.25, 0.1), (0.3, 0.35), (0.9, 0.4), (1, 1), (0.85, 1), (0.8, 0.7),
                                 (0.3, 0.7), (0.25, 1), (0.1, 1)]], (140, 100, 60)),
    (62, "chair", "furniture", 1.2, [[(0.1, 0), (0.3, 0), (0.3, 0.5), (0.9, 0.5), (0.9, 1), (0.8, 1), (0.8, 0.65),
                                      (0.2, 0.65), (0.2, 1), (0.1, 1)]], (120, 80, 40)),
]


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's crowd encoding: run lengths of the column-major mask, starting with a run of zeros."""
    flat = mask.ravel(order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    return {"counts": ([0] + counts) if flat[0] else counts, "size": list(mask.shape)}


def _coco_image(rng: np.random.Generator, size: tuple[int, int], image_id: int, first_id: int, crowd: bool):
    height, width = size
    image = np.empty((height, width, 3), dtype=np.float32)
    image[:] = rng.uniform(60, 200, 3) + np.linspace(0, rng.uniform(-60, 60), height)[:, None, None]
    annotations = []
    for k in range(int(rng.integers(2, 7)) + int(crowd)):
        is_crowd = crowd and k == 0
        coco_id, _, _, aspect, polygons, colour = COCO_SHAPES[0 if is_crowd else rng.integers(len(COCO_SHAPES))]
        box_h = height * rng.uniform(0.25, 0.7)
        box_w = min(width * 0.9, box_h / aspect)
        box_h = box_w * aspect
        x0, y0 = rng.uniform(0, width - box_w), rng.uniform(0, height - box_h)
        copies = [x0 + j * box_w * 0.6 for j in range(4)] if is_crowd else [x0]
        segmentation = [[float(v) for x, y in poly for v in (cx + x * box_w, y0 + y * box_h)]
                        for cx in copies for poly in polygons]
        mask = annotation_mask(segmentation, height, width)
        tint = np.clip(np.array(colour) + rng.normal(0, 25, 3), 0, 255)
        image[mask] = tint * rng.uniform(0.85, 1.15, (int(mask.sum()), 1))
        if is_crowd:
            segmentation = _uncompressed_rle(mask)
        ys, xs = np.nonzero(mask)
        annotations.append({"id": first_id + k, "image_id": image_id, "category_id": coco_id,
                            "segmentation": segmentation, "area": float(mask.sum()), "iscrowd": int(is_crowd),
                            "bbox": [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)]})
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), annotations


def generate_coco(root: str | Path, num_train: int = 24, num_val: int = 8, size: tuple[int, int] = (240, 320),
                  seed: int = 0) -> dict:
    """Write a COCO-2017-format instance set (polygons, and a crowd RLE in every split's first image).

    Returns:
        a summary with the number of images and annotations per split.
    """
    root = _fresh(root)
    categories = [{"id": cid, "name": name, "supercategory": sup} for cid, name, sup, *_ in COCO_SHAPES]
    summary = {"root": str(root), "size": list(size), "seed": seed, "images": {}, "annotations": {}}
    for split_index, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        images, annotations = [], []
        for i in range(count):
            rng = np.random.default_rng([seed, split_index, i])
            image_id = split_index * 100000 + i + 1
            pixels, anns = _coco_image(rng, size, image_id, image_id * 100, crowd=i == 0)
            file_name = f"{image_id:012d}.jpg"
            (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / f"{split}2017" / file_name, quality=92)
            images.append({"id": image_id, "file_name": file_name, "height": size[0], "width": size[1]})
            annotations += anns
        (root / "annotations").mkdir(exist_ok=True)
        data = {"info": {"description": "synthetic COCO-format set", "version": "1.0"}, "licenses": [],
                "images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))
        summary["images"][split], summary["annotations"][split] = len(images), len(annotations)
    return summary


IMAGENET_PATTERNS = ("stripes", "checker", "disc", "dots", "rings", "triangle")


def _pattern(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size - 0.5
    angle, period = rng.uniform(0, math.pi), rng.uniform(0.12, 0.3)
    u = xx * math.cos(angle) + yy * math.sin(angle)
    v = -xx * math.sin(angle) + yy * math.cos(angle)
    cx, cy = rng.uniform(-0.15, 0.15, 2)
    r = np.hypot(xx - cx, yy - cy)
    if kind == "stripes":
        mask = np.sin(2 * math.pi * u / period) > 0
    elif kind == "checker":
        mask = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    elif kind == "disc":
        mask = r < rng.uniform(0.2, 0.4)
    elif kind == "dots":
        mask = (np.hypot((u / period) % 1 - 0.5, (v / period) % 1 - 0.5)) < 0.22
    elif kind == "rings":
        mask = np.sin(2 * math.pi * r / period) > 0
    else:  # triangle: inside three half-planes around the centre
        mask = np.ones_like(u, dtype=bool)
        for k in range(3):
            a = angle + k * 2 * math.pi / 3
            mask &= (xx - cx) * math.cos(a) + (yy - cy) * math.sin(a) < rng.uniform(0.12, 0.22)
    foreground, background = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    image = np.where(mask[..., None], foreground, background) + rng.normal(0, 12, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def generate_imagenet(root: str | Path, num_classes: int = 4, train_per_class: int = 32, val_per_class: int = 8,
                      size: int = 64, seed: int = 0) -> dict:
    """Write class folders train/<wnid>/*.JPEG and val/<wnid>/*.JPEG of synthetic patterns, one pattern per class.

    Returns:
        a summary with the wnids, their patterns and the image counts.
    """
    if not 1 <= num_classes <= len(IMAGENET_PATTERNS):
        raise ValueError(f"num_classes must be 1..{len(IMAGENET_PATTERNS)}, got {num_classes}")
    root = _fresh(root)
    wnids = [f"n9{k:07d}" for k in range(num_classes)]  # synthetic ids that cannot collide with real synsets
    for split_index, (split, count) in enumerate((("train", train_per_class), ("val", val_per_class))):
        for k, wnid in enumerate(wnids):
            (root / split / wnid).mkdir(parents=True)
            for i in range(count):
                rng = np.random.default_rng([seed, split_index, k, i])
                Image.fromarray(_pattern(rng, IMAGENET_PATTERNS[k], size)).save(
                    root / split / wnid / f"{wnid}_{i:05d}.JPEG", format="JPEG", quality=92)
    return {"root": str(root), "classes": dict(zip(wnids, IMAGENET_PATTERNS)), "size": size, "seed": seed,
            "images": {"train": train_per_class * num_classes, "val": val_per_class * num_classes}}
