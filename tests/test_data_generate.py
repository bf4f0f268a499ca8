"""The generated default dataset: real Cityscapes layout and encoding, seeded, street classes, coarse labels."""
import re

import numpy as np
import pytest
from PIL import Image

from nas_core.data import CityscapesSegmentation, generate_cityscapes
from nas_core.data.labels import LABEL_ID, VALID_LABEL_ID
from nas_core.data.synthetic import coarsen, paint_street_scene

SIZE = (32, 64)
STREET_CLASSES = ("road", "sidewalk", "building", "vegetation", "sky", "car", "person", "pole", "traffic sign")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    summary = generate_cityscapes(root, num_train=4, num_val=3, num_extra=2, size=SIZE, seed=1)
    return root, summary


@pytest.mark.parametrize("split, count", [("train", 4), ("val", 3), ("coarse_train", 6)])
def test_reader_reads_generated_splits_unchanged(generated, split, count):
    root, _ = generated
    dataset = CityscapesSegmentation(root, split)
    assert len(dataset) == count
    image, label = dataset[0]
    assert image.shape == (3, *SIZE) and label.shape == SIZE


def test_files_follow_official_names_and_encodings(generated):
    root, summary = generated
    assert summary["images"] == {"train": 4, "val": 3, "train_extra": 2}
    pattern = re.compile(r"^(leftImg8bit|gtFine|gtCoarse)/(train|val|train_extra)/([a-z-]+)/\3_\d{6}_\d{6}_"
                         r"(leftImg8bit|gtFine_labelIds|gtFine_instanceIds|gtCoarse_labelIds|gtCoarse_instanceIds)\.png$")
    files = [path for path in root.rglob("*") if path.is_file()]
    assert len(files) == 9 + 2 * 7 + 2 * 6
    for path in files:
        relative = path.relative_to(root).as_posix()
        assert pattern.match(relative), relative
        array = np.array(Image.open(path))
        if "labelIds" in relative:
            assert array.dtype == np.uint8 and VALID_LABEL_ID[array].all()
        elif "instanceIds" in relative:
            labels = np.array(Image.open(str(path).replace("instanceIds", "labelIds")))
            # Cityscapes encoding: label id * 1000 + index for instance classes, the label id elsewhere
            assert np.array_equal(np.where(array >= 1000, array // 1000, array), labels)
        else:
            assert array.shape == (*SIZE, 3)


def test_generation_is_seeded(tmp_path):
    a = generate_cityscapes(tmp_path / "a", 2, 1, 1, SIZE, seed=3)
    b = generate_cityscapes(tmp_path / "b", 2, 1, 1, SIZE, seed=3)
    c = generate_cityscapes(tmp_path / "c", 2, 1, 1, SIZE, seed=4)
    files = sorted(path.relative_to(tmp_path / "a") for path in (tmp_path / "a").rglob("*.png"))
    assert a["train_class_fraction"] == b["train_class_fraction"] != c["train_class_fraction"]
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert any((tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in files)


def test_refuses_to_write_into_a_non_empty_folder(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(FileExistsError, match=str(tmp_path)):
        generate_cityscapes(tmp_path, 1, 1, 1, SIZE)


@pytest.mark.parametrize("name", STREET_CLASSES)
def test_scenes_contain_every_street_class(name):
    present = set()
    for seed in range(12):
        present |= set(np.unique(paint_street_scene(np.random.default_rng(seed), (128, 256))[1]).tolist())
    assert LABEL_ID[name] in present


@pytest.mark.parametrize("seed", range(3))
def test_coarse_labels_lie_inside_fine_ones_with_unlabeled_borders(seed):
    rng = np.random.default_rng(seed)
    _, fine, instances = paint_street_scene(rng, (128, 256))
    coarse, coarse_instances = coarsen(fine, instances, rng)
    labelled = coarse != 0
    assert np.array_equal(coarse[labelled], fine[labelled])
    assert np.array_equal(coarse_instances[labelled], instances[labelled])
    assert 0.3 < labelled.mean() < (fine != 0).mean()
    # no labelled pixel touches a different instance: boundaries are left unlabeled
    assert (instances[:-1][labelled[:-1]] == instances[1:][labelled[:-1]]).all()
