"""ImageNet class folders and the classification transforms (no torchvision)."""
import re

import numpy as np
import pytest
import torch

from nas_core.data import (
    ClassificationEvalTransform,
    ClassificationTrainTransform,
    DatasetError,
    ImageNetFolder,
    generate_imagenet,
)
from nas_core.data.transforms import normalize


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    generate_imagenet(root, num_classes=3, train_per_class=4, val_per_class=2, size=32, seed=0)
    return root


@pytest.mark.parametrize("split, count", [("train", 12), ("val", 6)])
def test_class_folders_give_sorted_wnid_indices(imagenet_root, split, count):
    dataset = ImageNetFolder(imagenet_root, split, ClassificationEvalTransform(size=24, resize=28))
    assert len(dataset) == count
    assert dataset.classes == sorted(dataset.classes) and len(dataset.classes) == 3
    assert [target for _, target in dataset.files] == sorted(k for k in range(3) for _ in range(count // 3))
    image, target = dataset[count - 1]
    assert image.shape == (3, 24, 24) and target == 2


@pytest.mark.parametrize("size, scale", [(16, (0.08, 1.0)), (32, (1.0, 1.0)), (48, (0.5, 0.5))])
def test_random_resized_crop_gives_square_of_size(size, scale):
    image = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    transform = ClassificationTrainTransform(size=size, scale=scale)
    for seed in range(5):
        assert transform(image, torch.Generator().manual_seed(seed)).shape == (3, size, size)


def test_train_transform_is_seeded():
    image = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    transform = ClassificationTrainTransform(size=16)
    a, b, c = (transform(image, torch.Generator().manual_seed(s)) for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_eval_transform_centre_crops_after_resizing_the_shorter_side():
    image = np.random.default_rng(0).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    out = ClassificationEvalTransform(size=16, resize=32)(image)  # no resize needed: the centre 16x16 window
    assert torch.allclose(out, normalize(torch.from_numpy(image).permute(2, 0, 1))[:, 8:24, 24:40], atol=1e-5)


def _stray_file(root):
    path = root / "train" / sorted(p.name for p in (root / "train").iterdir())[0] / "readme.txt"
    path.write_text("x")
    return path


def _empty_class(root):
    path = root / "val" / "n9zzzzzzz"
    path.mkdir()
    (root / "train" / "n9zzzzzzz").mkdir()
    return path


def _unknown_val_class(root):
    path = root / "val" / "n12345678"
    path.mkdir()
    return path


def _missing_split(root):
    for path in sorted((root / "val").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (root / "val").rmdir()
    return root / "val"


@pytest.mark.parametrize("breaker", [_stray_file, _empty_class, _unknown_val_class, _missing_split],
                         ids=lambda f: f.__name__[1:])
def test_malformed_folders_are_refused_naming_the_path(tmp_path, breaker):
    generate_imagenet(tmp_path, num_classes=2, train_per_class=1, val_per_class=1, size=16)
    named = breaker(tmp_path)
    split = named.relative_to(tmp_path).parts[0]
    with pytest.raises(DatasetError, match=re.escape(str(named))):
        ImageNetFolder(tmp_path, split)


def test_generator_refuses_more_classes_than_patterns(tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        generate_imagenet(tmp_path, num_classes=7)


def test_verify_decodes_every_image(tmp_path):
    generate_imagenet(tmp_path, num_classes=2, train_per_class=2, val_per_class=1, size=16)
    dataset = ImageNetFolder(tmp_path, "train")
    assert dataset.verify() == 4
    path = dataset.files[-1][0]
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DatasetError, match=re.escape(str(path))):
        dataset.verify()
