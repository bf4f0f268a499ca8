"""Cityscapes reader: official layout, id mapping, and a named error for every malformed input."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from nas_core.data import CityscapesSegmentation, DatasetError, TrainTransform
from nas_core.data.labels import ID_TO_TRAIN_ID, VALID_LABEL_ID
from nas_core.data.transforms import normalize

SIZE = (32, 64)
VALID_IDS = np.flatnonzero(VALID_LABEL_ID)
FRAMES = {  # image split -> frame ids; gtFine for train/val, gtCoarse for train/train_extra
    "train": ["aachen_000000_000019", "aachen_000001_000019", "bremen_000000_000019"],
    "val": ["frankfurt_000000_000294", "lindau_000000_000019"],
    "train_extra": ["bad-honnef_000000_000019"],
}


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def build_tree(root: Path, seed: int = 0) -> dict[Path, np.ndarray]:
    """Write random images and labelIds in the official layout; returns label path -> label ids written."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, frames in FRAMES.items():
        for frame in frames:
            city = frame.split("_")[0]
            _save(root / "leftImg8bit" / split / city / f"{frame}_leftImg8bit.png",
                  rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8))
            for annotation in (("gtFine",) if split == "val" else ("gtCoarse",) if split == "train_extra"
                               else ("gtFine", "gtCoarse")):
                ids = rng.choice(VALID_IDS, SIZE).astype(np.uint8)
                path = root / annotation / split / city / f"{frame}_{annotation}_labelIds.png"
                _save(path, ids)
                _save(path.with_name(path.name.replace("labelIds", "color")), np.zeros((*SIZE, 3), np.uint8))
                written[path] = ids
    return written


@pytest.fixture
def tree(tmp_path):
    return tmp_path, build_tree(tmp_path)


@pytest.mark.parametrize("split, count, annotation", [("train", 3, "gtFine"), ("val", 2, "gtFine"),
                                                       ("coarse_train", 4, "gtCoarse")])
def test_split_lists_every_image_with_its_label(tree, split, count, annotation):
    root, _ = tree
    dataset = CityscapesSegmentation(root, split)
    assert len(dataset) == count
    for image_path, label_path in dataset.files:
        assert label_path.name == image_path.name.replace("leftImg8bit", f"{annotation}_labelIds")
        assert label_path.parent.name == image_path.parent.name
    assert [image for image, _ in dataset.files] == sorted(image for image, _ in dataset.files)


@pytest.mark.parametrize("split", ["train", "val", "coarse_train"])
def test_item_is_normalized_image_and_official_train_ids(tree, split):
    root, written = tree
    dataset = CityscapesSegmentation(root, split)
    for index in range(len(dataset)):
        image, label = dataset[index]
        image_path, label_path = dataset.files[index]
        assert image.dtype == torch.float32 and image.shape == (3, *SIZE)
        assert label.dtype == torch.int64 and label.shape == SIZE
        expected_image = normalize(torch.from_numpy(np.array(Image.open(image_path))).permute(2, 0, 1))
        assert torch.equal(image, expected_image)
        assert np.array_equal(label.numpy(), ID_TO_TRAIN_ID[written[label_path]])


def test_train_transform_applies_through_a_seeded_loader(tree):
    root, _ = tree
    dataset = CityscapesSegmentation(root, "train", TrainTransform(patch=(24, 24), scale=(0.5, 2.0)))

    def batches():
        loader = DataLoader(dataset, batch_size=3, num_workers=2, generator=torch.Generator().manual_seed(7))
        return next(iter(loader))

    (images_a, labels_a), (images_b, labels_b) = batches(), batches()
    assert images_a.shape == (3, 3, 24, 24) and labels_a.shape == (3, 24, 24)
    assert torch.equal(images_a, images_b) and torch.equal(labels_a, labels_b)


def _remove(path: Path) -> None:
    if path.is_dir():
        for child in sorted(path.rglob("*"), reverse=True):
            child.rmdir() if child.is_dir() else child.unlink()
        path.rmdir()
    else:
        path.unlink()


TRAIN_IMAGE = "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
TRAIN_LABEL = "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"


def _break_missing_split(root):
    _remove(root / "leftImg8bit" / "val")
    return "val", "leftImg8bit/val"


def _break_missing_label_split(root):
    _remove(root / "gtFine" / "val")
    return "val", "gtFine/val"


def _break_missing_extra_split(root):
    _remove(root / "gtCoarse" / "train_extra")
    return "coarse_train", "gtCoarse/train_extra"


def _break_image_without_label(root):
    _remove(root / TRAIN_LABEL)
    return "train", TRAIN_LABEL


def _break_label_without_image(root):
    _remove(root / TRAIN_IMAGE)
    return "train", TRAIN_LABEL


def _break_empty_split(root):
    for city in (root / "leftImg8bit" / "val").iterdir():
        _remove(city)
    return "val", "leftImg8bit"


def _break_stray_file(root):
    (root / "leftImg8bit" / "train" / "aachen" / "notes.txt").write_text("x")
    return "train", "leftImg8bit/train/aachen/notes.txt"


def _break_frame_name(root):
    path = root / TRAIN_IMAGE
    path.rename(path.with_name("aachen_000000_leftImg8bit.png"))
    return "train", "leftImg8bit/train/aachen/aachen_000000_leftImg8bit.png"


@pytest.mark.parametrize("breaker", [_break_missing_split, _break_missing_label_split, _break_missing_extra_split,
                                     _break_image_without_label, _break_label_without_image, _break_empty_split,
                                     _break_stray_file, _break_frame_name], ids=lambda f: f.__name__[7:])
def test_malformed_tree_is_refused_naming_the_path(tree, breaker):
    root, _ = tree
    split, named = breaker(root)
    with pytest.raises(DatasetError, match=re.escape(str(root / named))):
        CityscapesSegmentation(root, split)


def _label_of_wrong_size(path: Path) -> None:
    Image.fromarray(np.full((SIZE[0], SIZE[1] + 1), 7, np.uint8)).save(path)


def _label_with_unknown_ids(path: Path) -> None:
    Image.fromarray(np.full(SIZE, 40, np.uint8)).save(path)


def _label_not_png(path: Path) -> None:
    path.write_bytes(b"not a png at all")


def _label_truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:60])


def _label_rgb(path: Path) -> None:
    Image.fromarray(np.full((*SIZE, 3), 7, np.uint8)).save(path)


@pytest.mark.parametrize("corrupt, message", [(_label_of_wrong_size, "but its image"),
                                              (_label_with_unknown_ids, r"outside the Cityscapes set: \[40\]"),
                                              (_label_not_png, "cannot read"), (_label_truncated, "cannot read"),
                                              (_label_rgb, "single-channel")],
                         ids=["wrong_size", "unknown_ids", "not_png", "truncated", "rgb"])
def test_bad_label_file_is_refused_on_load_naming_it(tree, corrupt, message):
    root, _ = tree
    dataset = CityscapesSegmentation(root, "train")
    corrupt(root / TRAIN_LABEL)
    with pytest.raises(DatasetError, match=message) as error:
        dataset[0]
    assert str(root / TRAIN_LABEL) in str(error.value)


def test_unreadable_image_is_refused_naming_it(tree):
    root, _ = tree
    (root / TRAIN_IMAGE).write_bytes(b"\x89PNG\r\n garbage")
    with pytest.raises(DatasetError, match="cannot read") as error:
        CityscapesSegmentation(root, "train")[0]
    assert str(root / TRAIN_IMAGE) in str(error.value)


def test_unknown_split_is_refused(tree):
    with pytest.raises(DatasetError, match="coarse_train"):
        CityscapesSegmentation(tree[0], "test")


@pytest.mark.parametrize("corrupt", [_label_of_wrong_size, _label_with_unknown_ids, _label_truncated],
                         ids=["wrong_size", "unknown_ids", "truncated"])
def test_verify_checks_every_file_up_front(tree, corrupt):
    root, _ = tree
    dataset = CityscapesSegmentation(root, "coarse_train")
    assert dataset.verify() == 4
    corrupt(root / "gtCoarse/train_extra/bad-honnef/bad-honnef_000000_000019_gtCoarse_labelIds.png")
    with pytest.raises(DatasetError, match="bad-honnef_000000_000019_gtCoarse_labelIds.png"):
        dataset.verify()
