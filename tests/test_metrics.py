"""ConfusionMatrix: batched accumulation, and scores equal to the official Cityscapes formulas."""
import math

import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as official
import numpy as np
import pytest
import torch

from nas_core.data.labels import CATEGORY_NAMES, ID_TO_TRAIN_ID, TRAIN_ID_NAMES, VALID_LABEL_ID
from nas_core.engine.metrics import ConfusionMatrix

VALID_IDS = np.flatnonzero(VALID_LABEL_ID)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _scenario(name: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(gt, prediction) label-id images for one situation the official evaluation must handle."""
    shape = (3, 40, 60)
    gt = rng.choice(VALID_IDS, shape)
    if name == "absent_classes":  # most classes have neither GT nor predictions (NaN, left out of the means)
        gt = rng.choice(np.array([0, 7, 8, 26]), shape)
        pred = np.where(rng.random(shape) < 0.7, gt, rng.choice(np.array([7, 24, 26]), shape))
    elif name == "predicted_ignored_ids":  # predicting an ignored id on a scored pixel is a false negative
        pred = np.where(rng.random(shape) < 0.5, gt, rng.choice(np.array([0, 1, 9, 14, 29]), shape))
    elif name == "perfect":
        pred = gt.copy()
    else:
        pred = np.where(rng.random(shape) < 0.4, gt, rng.choice(VALID_IDS, shape))
    return gt, pred


def official_scores(gt: np.ndarray, pred: np.ndarray) -> dict:
    """Scores from cityscapesscripts' own functions on its label-id confusion matrix (no files involved)."""
    args = official.CArgs()
    args.evalLabels = []
    matrix = official.generateMatrix(args)
    np.add.at(matrix, (gt.ravel(), pred.ravel()), 1)
    classes = {official.id2label[i].name: official.getIouScoreForLabel(i, matrix, args) for i in args.evalLabels}
    categories = {c: official.getIouScoreForCategory(c, matrix, args) for c in official.category2labels}
    return {"class": classes, "category": categories, "class_mean": official.getScoreAverage(classes, args),
            "category_mean": official.getScoreAverage(categories, args)}


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) < 1e-12


@pytest.mark.parametrize("scenario", ["noisy", "absent_classes", "predicted_ignored_ids", "perfect"])
@pytest.mark.parametrize("seed", range(3))
def test_scores_equal_the_official_formulas(scenario, seed):
    gt, pred = _scenario(scenario, np.random.default_rng(seed))
    expected = official_scores(gt, pred)
    metric = ConfusionMatrix()
    metric.update(torch.from_numpy(ID_TO_TRAIN_ID[pred]), torch.from_numpy(ID_TO_TRAIN_ID[gt]))
    result = metric.compute()
    for name, iou in zip(TRAIN_ID_NAMES, result["class_iou"]):
        assert _same(iou, expected["class"][name]), name
    for name, iou in zip(CATEGORY_NAMES, result["category_iou"]):
        assert _same(iou, expected["category"][name]), name
    assert _same(result["class_miou"], expected["class_mean"])
    assert _same(result["category_miou"], expected["category_mean"])


def test_hand_computed_three_class_example():
    target = torch.tensor([0, 0, 0, 1, 1, 2, 255])
    pred = torch.tensor([0, 0, 1, 1, 2, 2, 0])
    metric = ConfusionMatrix(num_classes=4)
    metric.update(pred, target)
    result = metric.compute()
    # class 0: tp 2, fn 1 -> 2/3; class 1: tp 1, fp 1, fn 1 -> 1/3; class 2: tp 1, fp 1 -> 1/2; class 3: absent
    assert result["class_iou"][:3] == pytest.approx([2 / 3, 1 / 3, 1 / 2])
    assert math.isnan(result["class_iou"][3])
    assert result["class_miou"] == pytest.approx((2 / 3 + 1 / 3 + 1 / 2) / 3)
    assert result["pixels"] == 6 and "category_iou" not in result


def test_prediction_outside_the_classes_is_a_false_negative_only():
    metric = ConfusionMatrix(num_classes=2)
    metric.update(torch.tensor([255, 1, 1]), torch.tensor([0, 0, 1]))
    assert metric.compute()["class_iou"] == pytest.approx([0.0, 0.5])


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (4, 8, 8), (256,)])
def test_batched_update_equals_one_image_at_a_time(shape):
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, 19, shape, generator=generator)
    target[..., :3] = 255
    pred = torch.randint(0, 19, shape, generator=generator)
    batched, single = ConfusionMatrix(), ConfusionMatrix()
    batched.update(pred, target)
    for p, t in zip(pred.reshape(-1, shape[-1]), target.reshape(-1, shape[-1])):
        single.update(p, t)
    assert torch.equal(batched.matrix, single.matrix)


def test_logits_are_reduced_by_argmax():
    logits = torch.randn(2, 19, 4, 4, generator=torch.Generator().manual_seed(0))
    target = torch.randint(0, 19, (2, 4, 4), generator=torch.Generator().manual_seed(1))
    a, b = ConfusionMatrix(), ConfusionMatrix()
    a.update(logits, target)
    b.update(logits.argmax(1), target)
    assert torch.equal(a.matrix, b.matrix)


def test_merge_equals_joint_accumulation():
    generator = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 19, (2, 64), generator=generator)
    target = torch.randint(0, 19, (2, 64), generator=generator)
    joint, first, second = ConfusionMatrix(), ConfusionMatrix(), ConfusionMatrix()
    joint.update(pred, target)
    first.update(pred[0], target[0])
    second.update(pred[1], target[1])
    assert torch.equal(first.merge(second).matrix, joint.matrix)


@pytest.mark.parametrize("device", DEVICES)
def test_accumulates_on_the_predictions_device(device):
    metric = ConfusionMatrix()
    metric.update(torch.zeros(4, dtype=torch.long, device=device), torch.zeros(4, dtype=torch.long, device=device))
    assert metric.matrix.device.type == device and metric.compute()["class_iou"][0] == 1.0


@pytest.mark.parametrize("bad_target", [torch.tensor([19]), torch.tensor([-1])])
def test_target_outside_classes_and_ignore_is_refused(bad_target):
    with pytest.raises(ValueError, match="target values"):
        ConfusionMatrix().update(torch.tensor([0]), bad_target)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shape"):
        ConfusionMatrix().update(torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long))
