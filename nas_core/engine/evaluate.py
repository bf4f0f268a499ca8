"""Evaluation of the retrained networks (paper section 5.3.2 and Table 1): class mIoU at the dataset's
full resolution with the Cityscapes scoring of `nas_core.engine.metrics`, and classification accuracy."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from nas_core.engine.metrics import ConfusionMatrix

INPUT_MULTIPLE = 16  # the segmentation networks' output stride


def pad_to_multiple(images: torch.Tensor, multiple: int = INPUT_MULTIPLE) -> torch.Tensor:
    """Pad (N, 3, H, W) at the bottom and right to multiples of `multiple` with 0 (the mean colour)."""
    h, w = images.shape[-2:]
    return F.pad(images, (0, -w % multiple, 0, -h % multiple))


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, loader: Iterable, num_classes: int = 19,
                          device: str | torch.device = "cpu", log_every: int = 0, log=print) -> dict:
    """Score `model` on every (image, label) batch of `loader`, whole images, no test-time augmentation.

    Images whose sides are not multiples of 16 are padded for the forward pass and the logits cropped
    back, so every labelled pixel is scored exactly once.

    Returns:
        `ConfusionMatrix.compute()` (class_iou, class_miou, category_miou, ...) plus `images`.
    """
    model.eval()
    matrix = ConfusionMatrix(num_classes, device=device)
    images_seen = 0
    for i, (images, labels) in enumerate(loader):
        h, w = images.shape[-2:]
        logits = model(pad_to_multiple(images.to(device)))[..., :h, :w]  # (N, classes, H, W)
        matrix.update(logits.argmax(1), labels.to(device))
        images_seen += images.shape[0]
        if log_every and (i + 1) % log_every == 0:
            log(f"[evaluate] {images_seen} images")
    return {**matrix.compute(), "images": images_seen}


@torch.no_grad()
def evaluate_constant(loader: Iterable, class_index: int, num_classes: int = 19) -> dict:
    """The scores of predicting `class_index` at every pixel: the floor a trained network must clear."""
    matrix = ConfusionMatrix(num_classes)
    for _, labels in loader:
        matrix.update(torch.full_like(labels, class_index), labels)
    return matrix.compute()


def majority_class(loader: Iterable, num_classes: int = 19, ignore_index: int = 255) -> int:
    """The most frequent labelled class over `loader`'s labels (the constant prediction's best choice)."""
    counts = torch.zeros(num_classes, dtype=torch.int64)
    for _, labels in loader:
        labels = labels[labels != ignore_index]
        counts += torch.bincount(labels.reshape(-1), minlength=num_classes)[:num_classes]
    return int(counts.argmax())


@torch.no_grad()
def evaluate_classification(model: nn.Module, loader: Iterable, device: str | torch.device = "cpu") -> dict:
    """Top-1 and top-5 accuracy (top-k capped at the number of classes) and the mean cross-entropy."""
    model.eval()
    correct1 = correct5 = total = 0
    loss_sum = 0.0
    for images, targets in loader:
        images, targets = images.to(device), torch.as_tensor(targets).to(device)
        logits = model(images)  # (N, classes)
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == targets).sum().item()
        correct5 += (top == targets[:, None]).any(1).sum().item()
        total += targets.numel()
    if total == 0:
        raise ValueError("evaluate_classification: the loader yielded no images")
    return {"top1": correct1 / total, "top5": correct5 / total, "loss": loss_sum / total, "images": total}
