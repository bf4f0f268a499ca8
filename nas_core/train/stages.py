"""The four retraining stages of the chosen architecture (paper section 5.3.2): ImageNet classification,
COCO segmentation, then the target dataset's coarse and fine stages (Cityscapes coarse, fine; or a folder-format
dataset's train split). Weights start fresh (the paper's footnote 2) and each stage starts from the previous
stage's model, or passes it on unchanged when switched off. ImageNet and COCO keep their own heads: a target
with other classes starts from everything but the segmentation head, which is re-initialised for its classes."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from nas_core.data import (
    ClassificationEvalTransform,
    ClassificationTrainTransform,
    CocoSegmentation,
    ImageNetFolder,
    TrainTransform,
)
from nas_core.data.labels import IGNORE_INDEX, TRAIN_ID_NAMES
from nas_core.data.target import target_dataset
from nas_core.engine.checkpoint import fingerprint_key
from nas_core.engine.distributed import DistInfo
from nas_core.engine.evaluate import eval_mode, evaluate_classification, evaluate_segmentation
from nas_core.engine.schedules import build_schedule
from nas_core.engine.seeding import make_train_loader
from nas_core.engine.training import TrainConfig, train
from nas_core.io import atomic_torch_save
from nas_core.space.classifier import Classifier, load_encoder
from nas_core.space.network import SegmentationNetwork
from nas_core.space.spaces import Architecture

MODEL_FORMAT = 1


@dataclass(frozen=True)
class StageData:
    task: str  # "classification" or "segmentation"
    dataset: str  # "imagenet", "coco" or "target" (paths.dataset, in data.format)
    train_split: str
    val_split: str


STAGE_DATA = {
    "pretrain_imagenet": StageData("classification", "imagenet", "train", "val"),
    "pretrain_coco": StageData("segmentation", "coco", "train", "val"),
    "train_coarse": StageData("segmentation", "target", "coarse_train", "val"),
    "train_fine": StageData("segmentation", "target", "train", "val"),
}
# the segmentation head: the decoder's convolutions that output one map per class (LR-ASPP has two)
HEAD_PREFIXES = ("decoder.classifier.", "decoder.low_classifier.")
TRAIN_STAGES = tuple(STAGE_DATA)  # section 5.3.2's chain, in order: each stage starts from the one before


@dataclass(frozen=True, kw_only=True)
class StageSettings:
    """Everything one stage's training needs, resolved (shared optimiser settings filled in), built from
    params.yaml's `train` section by `stage_settings`: that section (nas_core.config.TrainParams) holds their
    defaults and checks."""

    epochs: int
    lr: float
    momentum: float
    weight_decay: float
    nesterov: bool
    schedule: str  # "step", "poly" or "constant"
    milestones: tuple[int, ...]
    gamma: float
    power: float
    warmup_epochs: float
    patch: tuple[int, int]
    scale: tuple[float, float]
    batch_size: int
    num_workers: int
    amp: bool
    grad_clip: float | None
    seed: int
    eval_every: int
    checkpoint_every: int
    log_every: int

    @classmethod
    def from_dict(cls, d: dict) -> StageSettings:
        """The inverse of dataclasses.asdict (JSON turns the tuples into lists)."""
        tuples = {k: tuple(d[k]) for k in ("milestones", "patch", "scale")}
        return cls(**{**d, **tuples})

    def fingerprint(self, *parts: str) -> str:
        return fingerprint_key([asdict(self), *parts])


def stage_settings(train_params, stage: str) -> StageSettings:
    """The adapter from params.yaml's `train` section (nas_core.config.TrainParams) to one stage's settings."""
    cfg = train_params.stage(stage)
    return StageSettings(
        epochs=cfg.epochs, lr=cfg.lr or train_params.lr, momentum=train_params.momentum,
        weight_decay=train_params.weight_decay if cfg.weight_decay is None else cfg.weight_decay,
        nesterov=train_params.nesterov, schedule=cfg.schedule, milestones=tuple(cfg.milestones), gamma=cfg.gamma,
        power=cfg.power, warmup_epochs=cfg.warmup_epochs, patch=cfg.patch.hw, scale=tuple(cfg.scale),
        batch_size=cfg.batch_size, num_workers=train_params.num_workers, amp=train_params.amp,
        grad_clip=train_params.grad_clip, seed=train_params.seed, eval_every=cfg.eval_every,
        checkpoint_every=train_params.checkpoint_every, log_every=train_params.log_every)


def train_config(settings: StageSettings, stage: str, arch: Architecture, init: dict | None,
                 checkpoint_dir: str | Path) -> TrainConfig:
    """The adapter from one stage's settings to the engine's `TrainConfig`; its checkpoint goes into a folder of
    `checkpoint_dir` named by the fingerprint of the settings, the architecture and the starting weights."""
    weights = state_fingerprint(init and init["state_dict"])
    fingerprint = settings.fingerprint(stage, json.dumps(arch.to_dict()), weights)
    # one folder per configuration: a run with other settings never overwrites a killed run's checkpoint
    return TrainConfig(epochs=settings.epochs, checkpoint_dir=Path(checkpoint_dir) / fingerprint,
                       fingerprint=fingerprint, amp=settings.amp, grad_clip=settings.grad_clip,
                       checkpoint_every=settings.checkpoint_every, log_every=settings.log_every, name=stage)


def state_fingerprint(state: dict[str, torch.Tensor] | None) -> str:
    """A short hash of a state dict's values (identifies a stage's starting weights)."""
    if state is None:
        return "scratch"
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def build_datasets(stage: str, root: str | Path, settings: StageSettings, data_format: str = "cityscapes"):
    """(train, val) datasets of `stage` under the dataset root `root` (the target's in `data_format`), with the
    stage's transforms."""
    data = STAGE_DATA[stage]
    if data.task == "classification":
        size = settings.patch[0]
        train_set = ImageNetFolder(root, data.train_split, ClassificationTrainTransform(size, settings.scale))
        return train_set, ImageNetFolder(root, data.val_split, ClassificationEvalTransform(size, round(size * 8 / 7)))
    transform = TrainTransform(settings.patch, settings.scale, flip=True)
    if data.dataset == "coco":
        return CocoSegmentation(root, data.train_split, transform), CocoSegmentation(root, data.val_split)
    return (target_dataset(data_format, root, data.train_split, transform),
            target_dataset(data_format, root, data.val_split))


def payload_classes(payload: dict) -> tuple[str, ...] | None:
    """The class names a stage model's head predicts (payloads written before they were recorded: the Cityscapes
    classes when it has 19)."""
    if payload.get("class_names") is not None:
        return tuple(payload["class_names"])
    return TRAIN_ID_NAMES if payload.get("num_classes") == len(TRAIN_ID_NAMES) else None


def build_model(stage: str, arch: Architecture, init: dict | None, num_classes: int, seed: int,
                source: str = "previous stage", class_names: tuple[str, ...] | None = None) -> tuple[nn.Module, str]:
    """A freshly initialised model for `stage`, then the weights of `init` (a stage payload) copied in.

    Returns:
        the model and how it was initialised: 'scratch', 'encoder' (classifier -> segmentation), 'full', or
        'new_head' (a segmentation model of other classes than `class_names`: all but the head, which keeps
        its fresh initialisation for these classes).
    """
    torch.manual_seed(seed)  # the fresh init is reproducible: the chosen architecture's weights are reset
    task = STAGE_DATA[stage].task
    model = Classifier(arch, num_classes) if task == "classification" else SegmentationNetwork(arch, num_classes)
    if init is None or init.get("state_dict") is None:
        return model, "scratch"
    if Architecture.from_dict(init["arch"]) != arch:
        raise ValueError(f"{source}: its architecture {init['arch']} is not the chosen one {arch.to_dict()}")
    if init["task"] == "classification" and task == "segmentation":
        load_encoder(model, init["state_dict"], source)
        return model, "encoder"
    if init["task"] != task:
        raise ValueError(f"{source}: a {init['task']} model cannot start the {task} stage {stage}")
    if task == "segmentation" and class_names is not None and payload_classes(init) != tuple(class_names):
        body = {k: v for k, v in init["state_dict"].items() if not k.startswith(HEAD_PREFIXES)}
        missing, unexpected = model.load_state_dict(body, strict=False)
        if unexpected or any(not k.startswith(HEAD_PREFIXES) for k in missing):
            raise ValueError(f"{source}: its weights do not fit the {stage} model (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")
        return model, "new_head"
    try:
        model.load_state_dict(init["state_dict"])
    except RuntimeError as e:
        raise ValueError(f"{source}: its weights do not fit the {stage} model ({str(e).splitlines()[0]})") from None
    return model, "full"


def run_stage(stage: str, arch: Architecture, settings: StageSettings, data_root: str | Path,
              init: dict | None, checkpoint_dir: str | Path, *, dist_info: DistInfo | None = None,
              on_epoch_end: Callable[[int, dict], None] | None = None, log: Callable[[str], None] = print,
              data_format: str = "cityscapes") -> tuple[nn.Module, dict]:
    """Train the `stage` model of `arch` on the dataset at `data_root` (the target's: in `data_format`),
    starting from `init`.

    Returns:
        the trained model (unwrapped, on the CPU) and a summary: history, final validation scores,
        how the model was initialised, where the run resumed.
    """
    if stage not in STAGE_DATA:
        raise ValueError(f"unknown stage {stage!r}; valid stages are: {', '.join(TRAIN_STAGES)}")
    info = dist_info or DistInfo()
    data = STAGE_DATA[stage]
    train_set, val_set = build_datasets(stage, data_root, settings, data_format)
    class_names = tuple(train_set.classes if data.task == "classification" else train_set.class_names)
    num_classes = len(class_names)
    model, init_mode = build_model(stage, arch, init, num_classes, settings.seed, class_names=class_names)
    loader = make_train_loader(train_set, settings.batch_size, settings.seed, settings.num_workers, info)
    val_loader = DataLoader(val_set, batch_size=1, num_workers=settings.num_workers)
    loss_fn = nn.CrossEntropyLoss() if data.task == "classification" else nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)

    def score(m: nn.Module) -> dict:
        with eval_mode(m):
            if data.task == "classification":
                return evaluate_classification(m, val_loader, info.device)
            return evaluate_segmentation(m, val_loader, num_classes, info.device, class_names=class_names)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay, nesterov=settings.nesterov)
    schedule = build_schedule(settings.schedule, settings.epochs, settings.milestones, settings.gamma,
                              settings.power, settings.warmup_epochs)
    final: dict = {}

    def epoch_end(epoch: int, metrics: dict, m: nn.Module) -> dict:
        scores = {}
        if epoch + 1 == settings.epochs or (settings.eval_every and (epoch + 1) % settings.eval_every == 0):
            result = score(m)
            keys = ("top1", "top5") if data.task == "classification" else ("class_miou", "category_miou")
            scores = {f"val_{k}": float(result[k]) for k in keys if k in result}
            final.update(result)
        if on_epoch_end is not None:
            on_epoch_end(epoch, {**metrics, **scores})
        return scores

    config = train_config(settings, stage, arch, init, checkpoint_dir)
    result = train(model, loss_fn, loader, optimizer, schedule, config, dist_info=info, on_epoch_end=epoch_end, log=log)
    model = model.cpu()
    if not final and info.is_main:  # resumed after the last epoch had finished: score once more
        final.update(score(model.to(info.device)))
        model = model.cpu()
    return model, {"stage": stage, "task": data.task, "num_classes": num_classes, "class_names": list(class_names),
                   "init": init_mode,
                   "history": result.history, "final": final, "resumed_from": result.resumed_from,
                   "train_images": len(train_set), "val_images": len(val_set), "fingerprint": config.fingerprint,
                   "checkpoint": str(result.checkpoint)}


def stage_payload(stage: str, arch: Architecture, model: nn.Module | None, task: str | None, num_classes: int,
                  lineage: list[dict], metrics: dict | None = None, class_names: list[str] | None = None) -> dict:
    """What a stage hands to the next one (written as model.pt), with the names of the classes its head
    predicts (ImageNet: the wnids)."""
    return {"format": MODEL_FORMAT, "stage": stage, "arch": arch.to_dict(), "task": task,
            "num_classes": num_classes, "class_names": class_names,
            "state_dict": None if model is None else model.state_dict(), "lineage": lineage, "metrics": metrics or {}}


def skip_payload(stage: str, arch: Architecture, previous: dict | None) -> dict:
    """A switched-off stage passes the previous model on unchanged (or 'scratch' when there is none)."""
    source = _trained_source(previous)
    entry = {"stage": stage, "status": "skipped", "passes_on": source}
    if previous is None:
        return stage_payload(stage, arch, None, None, 0, [entry])
    return {**previous, "stage": stage, "lineage": [*previous["lineage"], entry]}


def _trained_source(payload: dict | None) -> str:
    """The stage whose weights a payload carries, or 'scratch'."""
    if payload is None or payload.get("state_dict") is None:
        return "scratch"
    return next(e["stage"] for e in reversed(payload["lineage"]) if e["status"] == "trained")


def trained_lineage(stage: str, previous: dict | None, init_mode: str,
                    class_names: list[str] | None = None) -> list[dict]:
    """The lineage of a trained stage; a head re-initialised for other classes is recorded with both class sets."""
    entry = {"stage": stage, "status": "trained", "starts_from": _trained_source(previous), "init": init_mode}
    if init_mode == "new_head":
        was = payload_classes(previous)
        entry["head"] = {"reinitialised": True, "num_classes": len(class_names or ()),
                         "classes": list(class_names or ()), "previous_num_classes": previous.get("num_classes"),
                         "previous_classes": list(was) if was else None}
    return [*(previous["lineage"] if previous else []), entry]


def save_payload(path: str | Path, payload: dict) -> None:
    atomic_torch_save(path, payload)


def load_payload(path: str | Path) -> dict:
    """A stage's model.pt; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no stage model here (has the previous stage run?)")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: not a stage model of format {MODEL_FORMAT}")
    return payload


def segmentation_network(payload: dict, source: str = "stage model") -> SegmentationNetwork:
    """The trained segmentation network a payload carries (the input of the benchmark)."""
    if payload.get("task") != "segmentation" or payload.get("state_dict") is None:
        raise ValueError(f"{source}: carries no trained segmentation network (lineage {payload.get('lineage')})")
    model = SegmentationNetwork(Architecture.from_dict(payload["arch"]), payload["num_classes"])
    model.load_state_dict(payload["state_dict"])
    return model.eval()
