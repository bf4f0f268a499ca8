"""Reading and writing dataset image files, with every failure reported as a `DatasetError` naming the file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from nas_core.data.labels import ID_TO_TRAIN_ID, VALID_LABEL_ID


class DatasetError(ValueError):
    """A dataset on disk is malformed; the message always names the offending file or folder. `problems` lists
    each defect on its own (the message joins them), for a tool that prints them one per line."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems) if problems else [message]


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()  # decode now, so a truncated file fails here and not deep inside a transform
    except (OSError, ValueError, SyntaxError) as error:  # PIL signals corrupt data through all three
        raise DatasetError(f"cannot read image {path}: {error}") from error
    return image


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to an (H, W, 3) uint8 array."""
    image = _open(Path(path))
    if image.mode != "RGB":  # convert() copies, so only pay for it when needed
        image = image.convert("RGB")
    return np.array(image)  # a writable copy, as torch.from_numpy requires


def read_index_png(path: str | Path) -> np.ndarray:
    """Decode a single-channel PNG (labelIds, instanceIds or a prediction) without converting values."""
    path = Path(path)
    image = _open(path)
    if image.mode not in ("L", "P", "I", "I;16", "I;16B", "1"):
        raise DatasetError(f"{path}: expected a single-channel PNG of ids, got mode {image.mode}")
    return np.array(image)


def label_ids_to_train_ids_checked(label_ids: np.ndarray, path: Path) -> np.ndarray:
    """Validate that all values are official Cityscapes label ids and map them to train ids."""
    if label_ids.size and (label_ids.min() < 0 or label_ids.max() > 255):
        raise DatasetError(f"{path}: label ids outside the Cityscapes set: {label_ids.min()}..{label_ids.max()}")
    label_ids = label_ids.astype(np.uint8, copy=False)
    present = np.flatnonzero(np.bincount(label_ids.ravel(), minlength=256))
    unknown = present[~VALID_LABEL_ID[present]]
    if unknown.size:
        raise DatasetError(f"{path}: label ids outside the Cityscapes set: {unknown.tolist()}")
    return ID_TO_TRAIN_ID[label_ids]


def read_label_pair(image_path: Path, label_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Load an image and its labelIds PNG; returns (H, W, 3) uint8 and (H, W) uint8 train ids."""
    image = read_rgb(image_path)
    label_ids = read_index_png(label_path)
    if label_ids.shape != image.shape[:2]:
        raise DatasetError(
            f"{label_path}: label is {label_ids.shape[1]}x{label_ids.shape[0]} but its image "
            f"{image_path} is {image.shape[1]}x{image.shape[0]}"
        )
    return image, label_ids_to_train_ids_checked(label_ids, label_path)


def write_png(path: str | Path, array: np.ndarray, compress_level: int = 1) -> None:
    """Write an (H, W, 3) uint8, (H, W) uint8 or (H, W) uint16 array as PNG, creating parent folders.

    Level 1 compression keeps the 1024x2048 generator fast; PNG is lossless at every level.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path}: PNG arrays must be uint8 or uint16, got {array.dtype}")
    Image.fromarray(array).save(path, compress_level=compress_level)
