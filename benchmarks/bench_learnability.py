"""Is the generated default dataset learnable? Val mIoU of a small network after N minutes of CPU training.

Trains from random initialisation on a freshly generated default set (32 train / 12 val frames of 256x512)
for a fixed wall-clock budget, then compares its val class mIoU with a constant majority-class prediction
and with uniformly random predictions.
Usage: python benchmarks/bench_learnability.py [--minutes 3 | --steps N] [--model squeezenas_lat_small|tiny]
       [--width 16] [--device cpu] [--workers 0]
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from nas_core.data import CityscapesSegmentation, TrainTransform, generate_cityscapes
from nas_core.data.labels import TRAIN_ID_NAMES
from nas_core.engine.metrics import ConfusionMatrix
from nas_core.space.spaces import NUM_CLASSES


class TinySegNet(nn.Module):
    """Four 3x3 conv-BN-ReLU layers at stride 4 (the last two dilated), a 1x1 classifier, bilinear upsampling."""

    def __init__(self, width: int = 16, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()

        def layer(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, dilation, dilation, bias=False),
                                 nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))

        self.features = nn.Sequential(layer(3, width, 2), layer(width, 2 * width, 2),
                                      layer(2 * width, 2 * width, dilation=2), layer(2 * width, 2 * width, dilation=4))
        self.classifier = nn.Conv2d(2 * width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.classifier(self.features(x)), size=x.shape[-2:], mode="bilinear",
                             align_corners=False)  # (N, classes, H, W)


def build_model(name: str, width: int) -> nn.Module:
    if name == "tiny":
        return TinySegNet(width)
    from nas_core.space.zoo import published_network  # one of the paper's networks, randomly initialised
    return published_network(name)


def evaluate(predict, dataset) -> dict:
    metric = ConfusionMatrix()
    with torch.no_grad():
        for image, label in DataLoader(dataset, batch_size=4):
            metric.update(predict(image), label)
    return metric.compute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--steps", type=int, help="stop after this many steps instead (compare models at equal steps)")
    parser.add_argument("--num-train", type=int, default=32, help="generated train frames")
    parser.add_argument("--model", default="squeezenas_lat_small", help="'tiny' or a nas_core.space.zoo published name")
    parser.add_argument("--width", type=int, default=16, help="channels of the tiny model")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu by default: the claim is about a few CPU minutes")
    parser.add_argument("--workers", type=int, default=0, help="loader workers (0: load in the training process)")
    parser.add_argument("--root", help="an existing generated dataset (default: generate one in a temp folder)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or generate_cityscapes(tmp, num_train=args.num_train, seed=args.seed)["root"]
        train = CityscapesSegmentation(root, "train", TrainTransform(patch=(256, 256), scale=(0.75, 1.5)))
        val = CityscapesSegmentation(root, "val")
        counts = np.zeros(256, dtype=np.int64)
        for _, label in DataLoader(CityscapesSegmentation(root, "train"), batch_size=8):
            counts += np.bincount(label.numpy().ravel(), minlength=256)
        majority = int(counts[:NUM_CLASSES].argmax())

        device = torch.device(args.device)
        model = build_model(args.model, args.width).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        loader = DataLoader(train, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=args.workers,
                            persistent_workers=args.workers > 0, generator=torch.Generator().manual_seed(args.seed))
        budget, steps, start = args.minutes * 60, 0, time.perf_counter()

        def progress() -> float:  # fraction of the budget spent: wall clock, or steps when --steps is given
            return steps / args.steps if args.steps else (time.perf_counter() - start) / budget

        while progress() < 1:
            for image, label in loader:
                if progress() >= 1:
                    break
                for group in optimizer.param_groups:  # cosine decay over the budget
                    group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * progress()))
                image, label = image.to(device, non_blocking=True), label.to(device, non_blocking=True)
                loss = F.cross_entropy(model.train()(image), label, ignore_index=255)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps += 1
        train_s = time.perf_counter() - start

        model.eval()
        trained = evaluate(lambda image: model(image.to(device)).argmax(1).cpu(), val)
        constant = evaluate(lambda image: torch.full(image.shape[:1] + image.shape[2:], majority), val)
        generator = torch.Generator().manual_seed(args.seed)
        uniform = evaluate(lambda image: torch.randint(0, NUM_CLASSES, image.shape[:1] + image.shape[2:],
                                                       generator=generator), val)

    params = sum(p.numel() for p in model.parameters())
    print(f"model {args.model} ({params / 1e3:.0f}k parameters), {steps} steps of batch {args.batch} "
          f"in {train_s / 60:.1f} min on {device.type} ({torch.get_num_threads()} threads), "
          f"final loss {loss.item():.3f}")
    print(f"{'class':<15}{'trained':>9}{'majority':>10}")
    for k, name in enumerate(TRAIN_ID_NAMES):
        if not math.isnan(trained["class_iou"][k]) or not math.isnan(constant["class_iou"][k]):
            print(f"{name:<15}{trained['class_iou'][k]:>9.3f}{constant['class_iou'][k]:>10.3f}")
    print(f"val class mIoU    : trained {trained['class_miou']:.3f}  majority ({TRAIN_ID_NAMES[majority]}) "
          f"{constant['class_miou']:.3f}  uniform random {uniform['class_miou']:.3f}")
    print(f"val category mIoU : trained {trained['category_miou']:.3f}  majority {constant['category_miou']:.3f}  "
          f"uniform random {uniform['category_miou']:.3f}")
    print(f"ratio trained / majority class mIoU: {trained['class_miou'] / constant['class_miou']:.1f}x")


if __name__ == "__main__":
    main()
