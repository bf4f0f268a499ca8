"""Cityscapes label ids, the 19 evaluation classes (train ids; the networks' NUM_CLASSES, nas_core/space/spaces.py)
and their 7 categories (Sec. 5.3).

Every table is derived from cityscapesscripts' own label definitions, so the mapping is the official one.
"""
from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import labels as _CS_LABELS

IGNORE_INDEX = 255

# Only labels with a real id can appear in a labelIds PNG (license plate has id -1 and is never drawn).
_DRAWN = [label for label in _CS_LABELS if label.id >= 0]
_EVALUATED = sorted((label for label in _DRAWN if not label.ignoreInEval), key=lambda label: label.trainId)

ID_TO_TRAIN_ID = np.full(256, IGNORE_INDEX, dtype=np.uint8)
VALID_LABEL_ID = np.zeros(256, dtype=bool)
for _label in _DRAWN:
    ID_TO_TRAIN_ID[_label.id] = _label.trainId
    VALID_LABEL_ID[_label.id] = True

TRAIN_ID_NAMES: tuple[str, ...] = tuple(label.name for label in _EVALUATED)
TRAIN_ID_COLORS: tuple[tuple[int, int, int], ...] = tuple(tuple(label.color) for label in _EVALUATED)

# Category order follows the label table (flat, construction, object, nature, sky, human, vehicle);
# 'void' holds only ignored labels, so the official evaluation never scores it.
CATEGORY_NAMES: tuple[str, ...] = tuple(dict.fromkeys(label.category for label in _EVALUATED))
CATEGORY_OF_TRAIN_ID = np.array([CATEGORY_NAMES.index(label.category) for label in _EVALUATED], dtype=np.int64)

# The synthetic scenes use these label ids; keeping the names here avoids magic numbers elsewhere.
LABEL_ID = {label.name: label.id for label in _DRAWN}

assert [label.trainId for label in _EVALUATED] == list(range(len(TRAIN_ID_NAMES)))  # the networks' NUM_CLASSES
