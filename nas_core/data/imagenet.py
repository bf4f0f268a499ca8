"""ImageNet-style class folders and the usual classification transforms, for backbone pretraining (Sec. 5.3.2).
Layout: <root>/{train,val}/<wnid>/<image>.JPEG; class indices follow the sorted wnids of train/.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from nas_core.data.files import DatasetError, read_rgb
from nas_core.data.transforms import normalize

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
SPLITS = ("train", "val")


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(3, h, w) float -> (3, *size); antialiased so downscaling does not alias, as PIL resizing would not."""
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def _chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)


class ClassificationTrainTransform:
    """Random resized crop (area fraction `scale`, aspect `ratio`, 10 tries then a centre crop), flip, normalize."""

    def __init__(self, size: int = 224, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True) -> None:
        self.size, self.scale, self.ratio, self.flip = size, scale, ratio, flip

    def _box(self, height: int, width: int, generator: torch.Generator | None) -> tuple[int, int, int, int]:
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
            target = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * u[0])
            aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                return math.floor(u[2] * (height - h + 1)), math.floor(u[3] * (width - w + 1)), h, w
        side = min(height, width)  # fallback: the largest centred square, as torchvision does for extreme images
        return (height - side) // 2, (width - side) // 2, side, side

    def __call__(self, image: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
        top, left, h, w = self._box(image.shape[0], image.shape[1], generator)
        crop = _resize(normalize(_chw(image[top : top + h, left : left + w])), (self.size, self.size))
        if self.flip and torch.rand(1, generator=generator).item() < 0.5:
            crop = crop.flip(-1)
        return crop


class ClassificationEvalTransform:
    """Resize the shorter side to `resize`, centre crop `size`, normalize (ImageNet's 256 -> 224 protocol)."""

    def __init__(self, size: int = 224, resize: int = 256) -> None:
        self.size, self.resize = size, resize

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        height, width = image.shape[:2]
        factor = self.resize / min(height, width)
        new_h, new_w = max(self.size, round(height * factor)), max(self.size, round(width * factor))
        resized = _resize(normalize(_chw(image)), (new_h, new_w))
        top, left = (new_h - self.size) // 2, (new_w - self.size) // 2
        return resized[:, top : top + self.size, left : left + self.size]


def _class_dirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"missing split folder {folder}")
    entries = sorted(folder.iterdir())
    stray = [entry for entry in entries if not entry.is_dir()]
    if stray:
        raise DatasetError(f"unexpected file {stray[0]} in {folder}: only <wnid> folders belong there")
    return entries


class ImageNetFolder(Dataset):
    """Map-style dataset of (normalized image (3, S, S) float, class index) over class folders.

    Args:
        root: folder holding train/ and val/, each with one sub-folder per wnid.
        split: 'train' or 'val'; val may only use wnids that train has, so indices agree.
        transform: called as transform(image (H, W, 3) uint8); defaults to `ClassificationEvalTransform()`.
    """

    def __init__(self, root: str | Path, split: str, transform: Callable | None = None) -> None:
        if split not in SPLITS:
            raise DatasetError(f"unknown ImageNet split {split!r}; expected one of {SPLITS}")
        self.root = Path(root)
        self.transform = transform if transform is not None else ClassificationEvalTransform()
        self.classes = [folder.name for folder in _class_dirs(self.root / "train")]
        index = {wnid: i for i, wnid in enumerate(self.classes)}
        self.files: list[tuple[Path, int]] = []
        for folder in _class_dirs(self.root / split):
            if folder.name not in index:
                raise DatasetError(f"class folder {folder} has no counterpart in {self.root / 'train'}")
            images = sorted(folder.iterdir())
            if not images:
                raise DatasetError(f"empty class folder {folder}")
            for path in images:
                if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
                    raise DatasetError(f"unexpected file {path}: expected images ending in {IMAGE_EXTENSIONS}")
                self.files.append((path, index[folder.name]))
        if not self.files:
            raise DatasetError(f"empty split {split!r}: no class folders under {self.root / split}")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, target = self.files[index]
        return self.transform(read_rgb(path)), target

    def verify(self) -> int:
        """Decode every image now rather than when first loaded; returns the count."""
        for path, _ in self.files:
            read_rgb(path)
        return len(self.files)
