"""The one evaluation of every segmentation network the pipeline scores (paper sections 5.3.1-5.3.2, Table 1):
class mIoU at the dataset's full resolution with the Cityscapes scoring of `nas_core.engine.metrics`, whatever
computes the logits (a supernet path, a static network, an extracted copy); and classification accuracy."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from nas_core.data.labels import IGNORE_INDEX
from nas_core.engine.metrics import ConfusionMatrix
from nas_core.space.spaces import INPUT_MULTIPLE, NUM_CLASSES

Forward = Callable[[torch.Tensor], torch.Tensor]  # (N, 3, H, W) normalized images -> (N, classes, H, W) logits


def pad_to_multiple(images: torch.Tensor, multiple: int = INPUT_MULTIPLE) -> torch.Tensor:
    """Pad (N, 3, H, W) at the bottom and right to multiples of `multiple` with 0 (the mean colour)."""
    h, w = images.shape[-2:]
    return F.pad(images, (0, -w % multiple, 0, -h % multiple))


def class_map(logits: torch.Tensor) -> torch.Tensor:
    """`logits.argmax(1)` (first index on ties), as one pass per class over contiguous class planes: on the
    CPU the strided argmax over dim 1 cost as much as a Small network's forward pass."""
    best = logits[:, 0].clone()
    index = torch.zeros(best.shape, dtype=torch.int64, device=logits.device)
    for c in range(1, logits.shape[1]):
        plane = logits[:, c]
        index.masked_fill_(plane > best, c)
        torch.maximum(best, plane, out=best)
    return index


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode for the block, then back in the mode it was in (a model being trained)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate_segmentation(forward: Forward, loader: Iterable, num_classes: int = NUM_CLASSES,
                          device: str | torch.device = "cpu", log_every: int = 0, log=print,
                          class_names: tuple[str, ...] | None = None) -> dict:
    """Score `forward` on every (image, label) batch of `loader`, whole images, no test-time augmentation.

    One set of rules for every caller:
    - `forward` must be in eval mode (BatchNorm on its running statistics; `eval_mode` lends a model being
      trained) and is only read, never switched, so threads may evaluate paths of one supernet at once;
    - images whose sides are not multiples of 16 are padded for the forward pass and the logits cropped
      back, so every labelled pixel is scored exactly once.

    Args:
        forward: a module (a static network, a copy extracted from the supernet) or a `SupernetPath`;
            anything with a `training` attribute is checked.
    Returns:
        `ConfusionMatrix.compute()` (class_iou, class_miou, class_names, category_miou for the Cityscapes
        classes, ...) plus `images`.
    """
    if getattr(forward, "training", False):
        raise ValueError("evaluate_segmentation: put the model in eval mode first (model.eval() or eval_mode)")
    matrix = ConfusionMatrix(num_classes, device=device, class_names=class_names)
    images_seen = 0
    for i, (images, labels) in enumerate(loader):
        h, w = images.shape[-2:]
        logits = forward(pad_to_multiple(images.to(device)))[..., :h, :w]  # (N, classes, H, W)
        matrix.update(class_map(logits), labels.to(device))
        images_seen += images.shape[0]
        if log_every and (i + 1) % log_every == 0:
            log(f"[evaluate] {images_seen} images")
    return {**matrix.compute(), "images": images_seen}


@torch.no_grad()
def evaluate_constant(loader: Iterable, class_index: int, num_classes: int = NUM_CLASSES,
                      class_names: tuple[str, ...] | None = None) -> dict:
    """The scores of predicting `class_index` at every pixel: the floor a trained network must clear."""
    matrix = ConfusionMatrix(num_classes, class_names=class_names)
    for _, labels in loader:
        matrix.update(torch.full_like(labels, class_index), labels)
    return matrix.compute()


def majority_class(loader: Iterable, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX) -> int:
    """The most frequent labelled class over `loader`'s labels (the constant prediction's best choice)."""
    counts = torch.zeros(num_classes, dtype=torch.int64)
    for _, labels in loader:
        labels = labels[labels != ignore_index]
        counts += torch.bincount(labels.reshape(-1), minlength=num_classes)[:num_classes]
    return int(counts.argmax())


@torch.no_grad()
def evaluate_classification(model: nn.Module, loader: Iterable, device: str | torch.device = "cpu") -> dict:
    """Top-1 and top-5 accuracy (top-k capped at the number of classes) and the mean cross-entropy, under the
    rules of `evaluate_segmentation`: `model` in eval mode, only read."""
    if model.training:
        raise ValueError("evaluate_classification: put the model in eval mode first (model.eval() or eval_mode)")
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
