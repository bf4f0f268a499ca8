"""The label tables equal cityscapesscripts' official definitions."""
import pytest
from cityscapesscripts.helpers.labels import labels as cs_labels

from nas_core.data.labels import (
    CATEGORY_NAMES,
    CATEGORY_OF_TRAIN_ID,
    ID_TO_TRAIN_ID,
    TRAIN_ID_NAMES,
    VALID_LABEL_ID,
)
from nas_core.space.spaces import NUM_CLASSES

DRAWN = [label for label in cs_labels if label.id >= 0]


@pytest.mark.parametrize("label", DRAWN, ids=lambda label: label.name.replace(" ", "_"))
def test_label_id_maps_to_official_train_id(label):
    assert VALID_LABEL_ID[label.id]
    assert ID_TO_TRAIN_ID[label.id] == (255 if label.ignoreInEval else label.trainId)


def test_ids_outside_the_label_table_are_invalid():
    assert not VALID_LABEL_ID[34:].any()
    assert VALID_LABEL_ID[:34].all()


@pytest.mark.parametrize("train_id", range(19))
def test_train_id_name_and_category_follow_the_table(train_id):
    label = next(label for label in DRAWN if label.trainId == train_id)
    assert TRAIN_ID_NAMES[train_id] == label.name
    assert CATEGORY_NAMES[CATEGORY_OF_TRAIN_ID[train_id]] == label.category


def test_seven_evaluated_categories_without_void():
    assert CATEGORY_NAMES == ("flat", "construction", "object", "nature", "sky", "human", "vehicle")


def test_the_networks_classes_are_the_cityscapes_evaluation_classes():
    assert len(TRAIN_ID_NAMES) == NUM_CLASSES == 19
