"""The folder format of a user's own segmentation task (README "Your own dataset"): ROOT/classes.yaml names the
classes, ROOT/images/{train,val}/<stem>.png|jpg, ROOT/masks/{train,val}/<stem>.png hold the pairs. A mask is an
index PNG (single channel or palette: the value is the class's position in classes.yaml, or its `id`) or an RGB
PNG matched by each class's `color`. Readers return class indices 0..K-1 and IGNORE_INDEX for ignored pixels."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml
from PIL import Image
from torch.utils.data import Dataset

from nas_core.data.files import DatasetError, read_rgb
from nas_core.data.labels import IGNORE_INDEX
from nas_core.data.transforms import EvalTransform

CLASSES_FILE = "classes.yaml"
SPLITS = ("train", "val")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
INDEX_MODES = ("L", "P", "I", "I;16", "I;16B", "1")  # single-channel PNGs whose values are class indices
RGB_MODES = ("RGB", "RGBA")
MAX_CLASSES = IGNORE_INDEX  # indices 0..254 stay clear of the internal ignore value


@dataclass(frozen=True)
class SegmentationClasses:
    """The classes of a segmentation task: names, display colours, the values that stand for them in a mask
    (`ids`; their positions unless classes.yaml gives an `id` per class) and the ignored value or colour."""

    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    ids: tuple[int, ...]
    ignore_index: int = IGNORE_INDEX
    ignore_color: tuple[int, int, int] | None = None

    def __len__(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict:
        return {"names": list(self.names), "colors": [list(c) for c in self.colors], "ids": list(self.ids),
                "ignore_index": self.ignore_index,
                "ignore_color": list(self.ignore_color) if self.ignore_color else None}


def _color(value: Any) -> tuple[int, int, int] | None:
    ok = isinstance(value, (list, tuple)) and len(value) == 3 and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)
    return tuple(value) if ok else None


def _class_problems(i: int, entry: Any, where: str) -> list[str]:
    if not isinstance(entry, dict):
        return [f"{where}: classes[{i}]: expected a mapping like {{name: road, color: [128, 64, 128]}}"]
    problems = [f"{where}: classes[{i}]: unknown key {k!r} (keys: name, color, id)"
                for k in entry if k not in ("name", "color", "id")]
    if not isinstance(entry.get("name"), str) or not entry["name"].strip():
        problems.append(f"{where}: classes[{i}].name: expected a non-empty name, got {entry.get('name')!r}")
    if _color(entry.get("color")) is None:
        problems.append(f"{where}: classes[{i}].color: expected [r, g, b] of integers 0..255, got "
                        f"{entry.get('color')!r}")
    if "id" in entry and not (isinstance(entry["id"], int) and not isinstance(entry["id"], bool)
                              and 0 <= entry["id"] <= 65535):
        problems.append(f"{where}: classes[{i}].id: expected an integer 0..65535, got {entry['id']!r}")
    return problems


def _twice(values: list, what: str, where: str) -> list[str]:
    seen = {v for v in values if values.count(v) > 1}
    return [f"{where}: {what} {v!r} given to more than one class" for v in sorted(seen, key=str)]


def parse_classes(data: Any, where: str) -> SegmentationClasses:
    """classes.yaml's content as `SegmentationClasses`; every problem in one DatasetError naming `where`."""
    if not isinstance(data, dict) or not isinstance(data.get("classes"), list) or not data["classes"]:
        raise DatasetError(f"{where}: expected 'classes:' with a list of {{name, color}} entries (and optional "
                           "ignore_index, ignore_color)")
    problems = [f"{where}: unknown key {k!r} (keys: classes, ignore_index, ignore_color)"
                for k in data if k not in ("classes", "ignore_index", "ignore_color")]
    entries = data["classes"]
    for i, entry in enumerate(entries):
        problems += _class_problems(i, entry, where)
    ignore = data.get("ignore_index", IGNORE_INDEX)
    if not isinstance(ignore, int) or isinstance(ignore, bool) or not 0 <= ignore <= 65535:
        problems.append(f"{where}: ignore_index: expected an integer 0..65535, got {ignore!r}")
        ignore = None  # checked no further
    ignore_color = data.get("ignore_color")
    if ignore_color is not None and _color(ignore_color) is None:
        problems.append(f"{where}: ignore_color: expected [r, g, b] of integers 0..255, got {ignore_color!r}")
    if len(entries) > MAX_CLASSES:
        problems.append(f"{where}: {len(entries)} classes; at most {MAX_CLASSES} are supported")
    entries = [e if isinstance(e, dict) else {} for e in entries]  # (a non-mapping entry is already a problem)
    names = [e.get("name") for e in entries]
    colors = [_color(e.get("color")) for e in entries]
    with_id = [e for e in entries if "id" in e]
    if with_id and len(with_id) != len(entries):
        problems.append(f"{where}: give every class an id or none (the mask value is then the class's position)")
    ids = [e.get("id") for e in entries] if with_id else list(range(len(entries)))
    problems += (_twice([n for n in names if isinstance(n, str)], "name", where)
                 + _twice([c for c in colors if c is not None], "color", where)
                 + _twice([i for i in ids if isinstance(i, int)], "id", where))
    if ignore is not None and ignore in ids:
        problems.append(f"{where}: ignore_index {ignore} is also the mask value of class {names[ids.index(ignore)]!r}"
                        + ("" if with_id else " (its position): give each class an id, or another ignore_index"))
    if ignore_color is not None and _color(ignore_color) is not None and _color(ignore_color) in colors:
        problems.append(f"{where}: ignore_color {ignore_color} is also the colour of class "
                        f"{names[colors.index(_color(ignore_color))]!r}")
    if problems:
        raise DatasetError("; ".join(problems), problems)
    return SegmentationClasses(tuple(names), tuple(colors), tuple(ids), ignore, _color(ignore_color))


def read_classes(root: str | Path) -> SegmentationClasses:
    """ROOT/classes.yaml; a missing, unparsable or inconsistent file is a DatasetError naming it."""
    path = Path(root) / CLASSES_FILE
    if not path.is_file():
        raise DatasetError(f"{path}: missing (the folder format names its classes there: README 'Your own dataset')")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DatasetError(f"{path}: cannot read it ({' '.join(str(e).split())})") from None
    return parse_classes(data, str(path))


def _files(folder: Path, suffixes: tuple[str, ...], problems: list[str]) -> dict[str, Path]:
    """{stem relative to `folder`: file} of the files under `folder` (subfolders too); others are problems."""
    found: dict[str, Path] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.name.startswith("."):
            continue
        if path.suffix.lower() not in suffixes:
            problems.append(f"{path}: unexpected file (expected {' or '.join(suffixes)})")
            continue
        stem = path.relative_to(folder).with_suffix("").as_posix()
        if stem in found:
            problems.append(f"{path}: a second file for {stem!r} besides {found[stem]}")
            continue
        found[stem] = path
    return found


def list_pairs(root: str | Path, split: str, problems: list[str]) -> list[tuple[Path, Path]]:
    """The (image, mask) pairs of a split, sorted; every listing problem is appended to `problems`."""
    if split not in SPLITS:
        raise DatasetError(f"unknown folder-format split {split!r}; expected one of {SPLITS}")
    root = Path(root)
    image_dir, mask_dir = root / "images" / split, root / "masks" / split
    missing = [d for d in (image_dir, mask_dir) if not d.is_dir()]
    problems += [f"{d}: missing split folder" for d in missing]
    if missing:
        return []
    images = _files(image_dir, IMAGE_SUFFIXES, problems)
    masks = _files(mask_dir, (".png",), problems)
    problems += [f"{images[s]}: no mask (expected {mask_dir / s}.png)" for s in images if s not in masks]
    problems += [f"{masks[s]}: no image (expected {image_dir / s}.png or .jpg)" for s in masks if s not in images]
    if not images and not masks:
        problems.append(f"{image_dir}: no images")
    return [(images[s], masks[s]) for s in sorted(images) if s in masks]


def decode_mask(mask: np.ndarray, classes: SegmentationClasses, path: Path) -> np.ndarray:
    """An index (H, W) or RGB (H, W, 3) mask as (H, W) uint8 class indices, IGNORE_INDEX where ignored; a value
    or colour that names no class is a DatasetError naming the file and what classes.yaml allows."""
    if mask.ndim == 2:
        values = mask.astype(np.int64)
        if values.size and values.min() < 0:
            raise DatasetError(f"{path}: negative mask values ({int(values.min())}); expected class indices")
        lut = np.full(max(int(values.max(initial=0)), classes.ignore_index, *classes.ids) + 1, -1, dtype=np.int64)
        lut[list(classes.ids)] = np.arange(len(classes))
        lut[classes.ignore_index] = IGNORE_INDEX
        out = lut[values]
        if (out < 0).any():
            bad = np.unique(values[out < 0])
            raise DatasetError(f"{path}: mask values {_few(bad.tolist())} ({int((out < 0).sum())} pixels) are no class "
                               f"of classes.yaml (expected {_few(list(classes.ids))} or ignore_index "
                               f"{classes.ignore_index})")
        return out.astype(np.uint8)
    packed = (mask[..., 0].astype(np.int64) << 16) | (mask[..., 1].astype(np.int64) << 8) | mask[..., 2]
    colours, inverse = np.unique(packed, return_inverse=True)
    known = {(r << 16) | (g << 8) | b: k for k, (r, g, b) in enumerate(classes.colors)}
    if classes.ignore_color is not None:
        r, g, b = classes.ignore_color
        known[(r << 16) | (g << 8) | b] = IGNORE_INDEX
    index = np.array([known.get(int(c), -1) for c in colours], dtype=np.int64)
    if (index < 0).any():
        bad = [(int(c) >> 16, (int(c) >> 8) & 255, int(c) & 255) for c in colours[index < 0]]
        count = int(np.isin(inverse, np.flatnonzero(index < 0)).sum())
        allowed = "the classes' colors" + (f" or ignore_color {list(classes.ignore_color)}"
                                           if classes.ignore_color else " (no ignore_color given)")
        raise DatasetError(f"{path}: colours {_few([list(c) for c in bad])} ({count} pixels) are no class of "
                           f"classes.yaml (expected {allowed})")
    return index[inverse.reshape(packed.shape)].astype(np.uint8)


def _few(values: list, n: int = 5) -> str:
    return ", ".join(str(v) for v in values[:n]) + (f", ... ({len(values)} in all)" if len(values) > n else "")


def read_mask(path: str | Path, classes: SegmentationClasses) -> np.ndarray:
    """Decode a mask file (index, palette or RGB PNG) to (H, W) uint8 class indices."""
    path = Path(path)
    try:
        image = Image.open(path)
        image.load()
    except (OSError, ValueError, SyntaxError) as error:
        raise DatasetError(f"cannot read mask {path}: {error}") from error
    if image.mode in RGB_MODES:
        return decode_mask(np.array(image.convert("RGB")), classes, path)
    if image.mode not in INDEX_MODES:
        raise DatasetError(f"{path}: a mask of mode {image.mode}; expected a single-channel index PNG, a palette "
                           "PNG or an RGB PNG")
    return decode_mask(np.array(image), classes, path)


def read_pair(image_path: Path, mask_path: Path, classes: SegmentationClasses) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 image and (H, W) uint8 class indices; a size mismatch names both files."""
    image = read_rgb(image_path)
    mask = read_mask(mask_path, classes)
    if mask.shape != image.shape[:2]:
        raise DatasetError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {image_path} is "
                           f"{image.shape[1]}x{image.shape[0]}")
    return image, mask


class FolderSegmentation(Dataset):
    """Map-style dataset of (normalized image (3, H, W) float, class-index label (H, W) long) of the folder format.

    Args:
        root: the folder holding classes.yaml, images/ and masks/.
        split: 'train' or 'val'.
        transform: called as transform(image (H, W, 3) uint8, label (H, W) uint8); defaults to `EvalTransform()`.
    """

    def __init__(self, root: str | Path, split: str, transform: Callable | None = None) -> None:
        self.root = Path(root)
        self.split = split
        self.transform = transform if transform is not None else EvalTransform()
        self.classes = read_classes(self.root)
        self.class_names = self.classes.names
        problems: list[str] = []
        self.files = list_pairs(self.root, split, problems)
        if problems:
            raise DatasetError(f"{len(problems)} problem(s) in {self.root}: " + "; ".join(problems), problems)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(*read_pair(*self.files[index], self.classes))

    def verify(self) -> int:
        """Decode and check every pair now; returns the count (the first bad file raises)."""
        for pair in self.files:
            read_pair(*pair, self.classes)
        return len(self.files)
