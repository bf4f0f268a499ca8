"""COCO instances to Cityscapes-class masks: the category mapping, overlaps and crowds, and named errors."""
import json
import re

import numpy as np
import pytest
from PIL import Image

from nas_core.data import CocoSegmentation, DatasetError, generate_coco
from nas_core.data.coco import COCO_TO_CITYSCAPES, semantic_mask
from nas_core.data.labels import TRAIN_ID_NAMES

H, W = 24, 32


def square(x0, y0, x1, y1, category, crowd=False, ann_id=1):
    return {"id": ann_id, "image_id": 1, "category_id": category, "iscrowd": int(crowd),
            "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]}


@pytest.mark.parametrize("coco_id", sorted(COCO_TO_CITYSCAPES),
                         ids=lambda i: COCO_TO_CITYSCAPES[i][0].replace(" ", "_"))
def test_mapped_category_becomes_its_cityscapes_class(coco_id):
    label = semantic_mask([square(4, 4, 12, 12, coco_id)], H, W)
    assert set(np.unique(label[5:11, 5:11]).tolist()) == {TRAIN_ID_NAMES.index(COCO_TO_CITYSCAPES[coco_id][1])}
    assert (label[15:] == 255).all()  # no instance: unknown class, ignored


@pytest.mark.parametrize("coco_id", [5, 9, 15, 18, 62, 90])
def test_unmapped_category_is_ignored(coco_id):
    assert (semantic_mask([square(4, 4, 12, 12, coco_id)], H, W) == 255).all()


def test_pixels_of_two_instances_and_crowds_are_ignored():
    crowd_rle = {"counts": [H * 20, H * 4, H * (W - 24)], "size": [H, W]}  # columns 20..23, column-major runs
    annotations = [square(2, 2, 10, 10, 1, ann_id=1), square(6, 6, 14, 14, 3, ann_id=2),
                   {"id": 3, "image_id": 1, "category_id": 1, "iscrowd": 1, "segmentation": crowd_rle},
                   square(18, 2, 26, 8, 3, ann_id=4)]
    label = semantic_mask(annotations, H, W)
    person, car = TRAIN_ID_NAMES.index("person"), TRAIN_ID_NAMES.index("car")
    assert label[3, 3] == person and label[12, 12] == car
    assert label[8, 8] == 255  # claimed by both the person and the car
    assert (label[:, 20:24] == 255).all() and label[4, 19] == car and label[4, 25] == car


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    generate_coco(root, num_train=3, num_val=2, size=(H * 2, W * 2), seed=0)
    return root


@pytest.mark.parametrize("split, count", [("train", 3), ("val", 2)])
def test_generated_set_reads_with_mapped_labels_and_a_crowd(coco_root, split, count):
    dataset = CocoSegmentation(coco_root, split)
    data = json.loads((coco_root / "annotations" / f"instances_{split}2017.json").read_text())
    assert len(dataset) == count == len(data["images"])
    assert any(a["iscrowd"] and isinstance(a["segmentation"]["counts"], list) for a in data["annotations"])
    assert any(isinstance(a["segmentation"], list) for a in data["annotations"])
    mapped = {TRAIN_ID_NAMES.index(name) for _, name in COCO_TO_CITYSCAPES.values()}
    for index in range(count):
        image, label = dataset[index]
        assert image.shape == (3, H * 2, W * 2) and label.shape == (H * 2, W * 2)
        assert set(label.unique().tolist()) <= mapped | {255}


VAL_JSON = "annotations/instances_val2017.json"


def _edit_json(edit):
    def breaker(root):
        path = root / VAL_JSON
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
        return VAL_JSON
    return breaker


def _delete(relative):
    def breaker(root):
        (root / relative).unlink()
        return relative
    return breaker


def _garble_json(root):
    (root / VAL_JSON).write_text("{")
    return VAL_JSON


@pytest.mark.parametrize("breaker", [
    _delete(VAL_JSON),
    _delete("val2017/000000100001.jpg"),
    _edit_json(lambda data: data["annotations"][0].update(category_id=999)),
    _edit_json(lambda data: data["annotations"][0].update(image_id=7)),
    _edit_json(lambda data: data["categories"][0].update(name="cat")),
    _edit_json(lambda data: data.update(images=[], annotations=[])),
    _garble_json,
], ids=["missing_json", "missing_image", "unknown_category", "unknown_image", "renamed_category", "empty", "bad_json"])
def test_malformed_coco_is_refused_naming_the_file(tmp_path, breaker):
    generate_coco(tmp_path, num_train=1, num_val=2, size=(H, W))
    named = breaker(tmp_path)
    with pytest.raises(DatasetError, match=re.escape(named)):
        CocoSegmentation(tmp_path, "val")


def test_image_of_wrong_size_is_refused_naming_it(tmp_path):
    generate_coco(tmp_path, num_train=1, num_val=1, size=(H, W))
    path = tmp_path / "val2017" / "000000100001.jpg"
    Image.new("RGB", (W + 1, H)).save(path)
    with pytest.raises(DatasetError, match=re.escape(str(path))):
        CocoSegmentation(tmp_path, "val")[0]


def test_verify_decodes_every_image_and_mask(tmp_path):
    generate_coco(tmp_path, num_train=1, num_val=2, size=(H, W))
    dataset = CocoSegmentation(tmp_path, "val")
    assert dataset.verify() == 2
    (tmp_path / "val2017" / "000000100002.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="000000100002.jpg"):
        dataset.verify()
