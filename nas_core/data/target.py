"""The target task's dataset (paper section 5: "run the search directly on the target task"): Cityscapes in its
official layout, or any segmentation dataset in the folder format. Search, sampling, retraining and the benchmark
read it through these functions, so the classes (their count and names) always come from the data."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from nas_core.data import cityscapes, folder
from nas_core.data.cityscapes import CityscapesSegmentation
from nas_core.data.files import DatasetError, read_label_pair
from nas_core.data.folder import FolderSegmentation, SegmentationClasses
from nas_core.data.labels import IGNORE_INDEX, TRAIN_ID_COLORS, TRAIN_ID_NAMES

FORMATS = ("cityscapes", "folder")
CITYSCAPES_CLASSES = SegmentationClasses(TRAIN_ID_NAMES, TRAIN_ID_COLORS, tuple(range(len(TRAIN_ID_NAMES))))
# the splits `dataset check` reads; Cityscapes' coarse set only where its gtCoarse folder exists
CHECK_SPLITS = {"cityscapes": ("train", "val", "coarse_train"), "folder": folder.SPLITS}


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise DatasetError(f"unknown dataset format {fmt!r}; expected one of: {', '.join(FORMATS)}")


def target_classes(fmt: str, root: str | Path) -> SegmentationClasses:
    """The classes of the target dataset: Cityscapes' 19 evaluation classes, or ROOT/classes.yaml's."""
    _check_format(fmt)
    return CITYSCAPES_CLASSES if fmt == "cityscapes" else folder.read_classes(root)


def target_dataset(fmt: str, root: str | Path, split: str, transform: Callable | None = None) -> Dataset:
    """A split of the target dataset: 'train', 'val', and for Cityscapes 'coarse_train' (gtCoarse)."""
    _check_format(fmt)
    if fmt == "folder" and split not in folder.SPLITS:
        raise DatasetError(f"{root}: the folder format has no {split!r} split (only {', '.join(folder.SPLITS)})")
    reader = CityscapesSegmentation if fmt == "cityscapes" else FolderSegmentation
    return reader(root, split, transform)


def _split_pairs(fmt: str, root: Path, split: str, problems: list[str]) -> list[tuple[Path, Path]]:
    if fmt == "folder":
        return folder.list_pairs(root, split, problems)
    try:
        return cityscapes.list_pairs(root, split)
    except DatasetError as e:
        problems.append(str(e))
        return []


def _reader(fmt: str, classes: SegmentationClasses) -> Callable[[Path, Path], tuple[np.ndarray, np.ndarray]]:
    if fmt == "folder":
        return lambda image, mask: folder.read_pair(image, mask, classes)
    return read_label_pair


def check_dataset(fmt: str, root: str | Path) -> tuple[dict | None, list[str]]:
    """Read every file of the dataset; returns the counts `squeezenas dataset check` prints and every problem
    found (each naming its file), not only the first.

    Returns:
        ({format, root, num_classes, classes, colors, splits: {split: images}, class_pixels: {name: {split: n}},
        ignored_pixels, ignored_share}, problems); the counts are None when classes.yaml itself is unusable.
    """
    _check_format(fmt)
    root = Path(root)
    if not root.is_dir():
        return None, [f"{root}: no such dataset folder"]
    try:
        classes = target_classes(fmt, root)
    except DatasetError as e:
        return None, e.problems
    read = _reader(fmt, classes)
    splits = [s for s in CHECK_SPLITS[fmt] if s != "coarse_train" or (root / "gtCoarse").is_dir()]
    problems: list[str] = []
    images, ignored, pixels = {}, {}, {}
    counts = {}
    for split in splits:
        histogram = np.zeros(IGNORE_INDEX + 1, dtype=np.int64)
        pairs = _split_pairs(fmt, root, split, problems)
        for pair in pairs:
            try:
                _, label = read(*pair)
            except DatasetError as e:
                problems.append(str(e))
                continue
            histogram += np.bincount(label.ravel(), minlength=IGNORE_INDEX + 1)
        images[split] = len(pairs)
        counts[split] = histogram[: len(classes)]
        ignored[split] = int(histogram[IGNORE_INDEX])
        pixels[split] = int(histogram.sum())
    summary = {"format": fmt, "root": str(root), "num_classes": len(classes), "classes": list(classes.names),
               "colors": [list(c) for c in classes.colors], "splits": images,
               "class_pixels": {name: {s: int(counts[s][k]) for s in splits} for k, name in enumerate(classes.names)},
               "ignored_pixels": ignored,
               "ignored_share": {s: ignored[s] / pixels[s] if pixels[s] else 0.0 for s in splits}}
    return summary, problems


def overlay(image: np.ndarray, label: np.ndarray, classes: SegmentationClasses, alpha: float = 0.5) -> np.ndarray:
    """The image with each labelled pixel blended with its class colour; ignored pixels keep the image."""
    palette = np.zeros((IGNORE_INDEX + 1, 3), dtype=np.float32)
    palette[: len(classes)] = np.asarray(classes.colors, dtype=np.float32)
    labelled = (label != IGNORE_INDEX)[..., None]
    blended = (1 - alpha) * image.astype(np.float32) + alpha * palette[label]
    return np.where(labelled, blended, image).astype(np.uint8)


def preview_png(fmt: str, root: str | Path, count: int = 8, columns: int = 4, tile_width: int = 256) -> bytes:
    """A grid of up to `count` images (train first, then val) with their masks overlaid in the class colours,
    and a legend of the colours and class names: the picture that shows whether the labels are read as meant."""
    root = Path(root)
    classes = target_classes(fmt, root)
    problems: list[str] = []
    pairs = [p for split in folder.SPLITS for p in _split_pairs(fmt, root, split, problems)]
    if not pairs:
        raise DatasetError(f"{root}: no image with a mask to preview" + (f" ({problems[0]})" if problems else ""))
    chosen = [pairs[i] for i in np.linspace(0, len(pairs) - 1, min(count, len(pairs))).round().astype(int)]
    read = _reader(fmt, classes)
    tiles = []
    for image_path, mask_path in chosen:
        image, label = read(image_path, mask_path)
        tile = Image.fromarray(overlay(image, label, classes))
        tiles.append(tile.resize((tile_width, max(1, round(tile.height * tile_width / tile.width))), Image.NEAREST))
    tile_h = max(t.height for t in tiles)
    rows = -(-len(tiles) // columns)
    line, legend_columns = 18, max(1, columns * tile_width // 180)
    legend_h = line * -(-len(classes) // legend_columns) + 8
    canvas = Image.new("RGB", (columns * tile_width, rows * tile_h + legend_h), (255, 255, 255))
    for i, tile in enumerate(tiles):
        canvas.paste(tile, ((i % columns) * tile_width, (i // columns) * tile_h))
    draw = ImageDraw.Draw(canvas)
    for k, (name, colour) in enumerate(zip(classes.names, classes.colors)):
        x, y = (k % legend_columns) * 180 + 4, rows * tile_h + 4 + (k // legend_columns) * line
        draw.rectangle([x, y, x + 14, y + 14], fill=tuple(colour), outline=(0, 0, 0))
        draw.text((x + 20, y + 2), f"{k}: {name}", fill=(0, 0, 0))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()
