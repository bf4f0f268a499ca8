"""Segmentation metric (Sec. 5.3): class and category IoU from a confusion matrix, exactly as cityscapesscripts'
evalPixelLevelSemanticLabeling: ignored ground truth never counts, a prediction outside the 19 classes is a false
negative, an IoU with an empty denominator is NaN, and means average the non-NaN entries only."""
from __future__ import annotations

import math
from bisect import bisect_left
from pathlib import Path

import numpy as np
import torch

from nas_core.data.cityscapes import frame_id, list_ground_truth
from nas_core.data.files import DatasetError, label_ids_to_train_ids_checked, read_index_png
from nas_core.data.labels import CATEGORY_NAMES, CATEGORY_OF_TRAIN_ID, IGNORE_INDEX, TRAIN_ID_NAMES
from nas_core.space.spaces import NUM_CLASSES


def _iou(matrix: torch.Tensor) -> list[float]:
    """IoU per row of a (K, K + 1) ground-truth x prediction count matrix whose last column means 'no class'."""
    matrix = matrix.double()
    tp = matrix.diagonal()
    fn = matrix.sum(1) - tp
    fp = matrix[:, :-1].sum(0) - tp
    denominator = tp + fp + fn
    iou = torch.where(denominator > 0, tp / denominator.clamp(min=1), torch.full_like(tp, math.nan))
    return iou.tolist()


def _nanmean(values: list[float]) -> float:
    valid = [value for value in values if not math.isnan(value)]
    return sum(valid) / len(valid) if valid else math.nan


class ConfusionMatrix:
    """Accumulates ground truth x prediction counts on the predictions' device.

    Rows are the `num_classes` ground-truth classes (pixels labelled `ignore_index` are skipped); the
    extra last column counts predictions outside 0..num_classes-1, which can only be false negatives.
    Category scores use the Cityscapes categories and so need the Cityscapes classes: `class_names` (default:
    Cityscapes' names for 19 classes, none otherwise) equal to its 19 names.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX,
                 device: torch.device | str | None = None, class_names: tuple[str, ...] | None = None) -> None:
        if class_names is None and num_classes == NUM_CLASSES:
            class_names = TRAIN_ID_NAMES
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.class_names = tuple(class_names) if class_names is not None else None
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes + 1, dtype=torch.int64,
                                  device=device if device is not None else "cpu")
        self._device_fixed = device is not None

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: `pred` holds class indices shaped like `target`, or logits with the class axis at dim 1."""
        if pred.dim() == target.dim() + 1:
            pred = pred.argmax(1)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} does not match target {tuple(target.shape)}")
        if not self._device_fixed:  # follow the first batch's device so accumulation never copies to host
            self.matrix = self.matrix.to(pred.device)
            self._device_fixed = True
        pred = pred.to(self.matrix.device).reshape(-1).long()
        target = target.to(self.matrix.device).reshape(-1).long()
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        if target.numel() and (target.min() < 0 or target.max() >= self.num_classes):
            raise ValueError(f"target values must be 0..{self.num_classes - 1} or {self.ignore_index}")
        columns = self.num_classes + 1
        pred = torch.where((pred >= 0) & (pred < self.num_classes), pred, self.num_classes)
        counts = torch.bincount(target * columns + pred, minlength=self.num_classes * columns)
        self.matrix += counts.view(self.num_classes, columns)

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """Add another matrix's counts (e.g. from another worker) into this one; returns self."""
        if other.matrix.shape != self.matrix.shape:
            raise ValueError(f"cannot merge matrices of shapes {tuple(self.matrix.shape)} and "
                             f"{tuple(other.matrix.shape)}")
        self.matrix += other.matrix.to(self.matrix.device)
        return self

    def compute(self) -> dict:
        """Scores as plain floats (NaN where a class or category has neither ground truth nor predictions).

        Returns:
            class_iou (list per class), class_miou, category_iou (list per category), category_miou,
            pixels (number of scored pixels), class_names when known and, for the Cityscapes classes,
            category_names.
        """
        class_iou = _iou(self.matrix)
        result = {"class_iou": class_iou, "class_miou": _nanmean(class_iou), "pixels": int(self.matrix.sum())}
        if self.class_names is not None:
            result["class_names"] = list(self.class_names)
        if self.class_names == TRAIN_ID_NAMES:
            category = torch.as_tensor(CATEGORY_OF_TRAIN_ID, device=self.matrix.device)
            num_categories = len(CATEGORY_NAMES)
            # sum rows, then the class columns, within each category; 'no class' stays the last column
            rows = torch.zeros(num_categories, self.num_classes + 1, dtype=torch.int64, device=self.matrix.device)
            rows.index_add_(0, category, self.matrix)
            by_category = torch.zeros(num_categories, num_categories + 1, dtype=torch.int64, device=self.matrix.device)
            by_category.index_add_(1, category, rows[:, :-1])
            by_category[:, -1] = rows[:, -1]
            category_iou = _iou(by_category)
            result.update(category_iou=category_iou, category_miou=_nanmean(category_iou),
                          category_names=list(CATEGORY_NAMES))
        return result


def _prediction_index(predictions_dir: Path) -> list[tuple[str, Path]]:
    if not predictions_dir.is_dir():
        raise DatasetError(f"missing predictions folder {predictions_dir}")
    return sorted((path.name, path) for path in predictions_dir.rglob("*.png") if path.is_file())


def find_prediction(index: list[tuple[str, Path]], ground_truth: Path) -> Path:
    """The single prediction whose file name starts with the ground truth's '<city>_<seq>_<frame>' (official rule)."""
    prefix = frame_id(ground_truth)
    start = bisect_left(index, (prefix,))
    matches = []
    for name, path in index[start:]:
        if not name.startswith(prefix):
            break
        matches.append(path)
    if not matches:
        raise DatasetError(f"found no prediction for ground truth {ground_truth} (expected {prefix}*.png)")
    if len(matches) > 1:
        raise DatasetError(f"found multiple predictions for ground truth {ground_truth}: {[str(m) for m in matches]}")
    return matches[0]


def evaluate_prediction_folder(cityscapes_root: str | Path, predictions_dir: str | Path, split: str = "val") -> dict:
    """Score label-id PNG predictions (official results format) against gtFine of `split`.

    Returns:
        `ConfusionMatrix.compute()` plus `images`, the number of evaluated ground-truth frames.
    """
    index = _prediction_index(Path(predictions_dir))
    metric = ConfusionMatrix()
    ground_truths = list_ground_truth(cityscapes_root, split)
    for gt_path in ground_truths:
        pred_path = find_prediction(index, gt_path)
        target = label_ids_to_train_ids_checked(read_index_png(gt_path), gt_path)
        pred_ids = read_index_png(pred_path)
        if pred_ids.shape != target.shape:
            raise DatasetError(f"prediction {pred_path} is {pred_ids.shape[1]}x{pred_ids.shape[0]} but ground truth "
                               f"{gt_path} is {target.shape[1]}x{target.shape[0]}")
        # ignored label ids (e.g. 0) become 255, i.e. the 'no class' column: a miss on any scored pixel
        pred = label_ids_to_train_ids_checked(pred_ids, pred_path)
        metric.update(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(target))
    return {**metric.compute(), "images": len(ground_truths)}
