"""Does the data side keep up with training? Train-loader and mIoU-metric images/s vs supernet forward+backward.

Generates a handful of 1024x2048 Cityscapes-format frames, then measures, one after another on the same
machine: the train loader (TrainTransform to 768x768 patches, with workers), ConfusionMatrix.update on
768x768 predictions, and forward+backward+step of the Small supernet (nas_core.search.supernet) on 768x768 patches.
Usage: python benchmarks/bench_data_loader.py [--images 6] [--workers 2] [--device cpu|cuda] [--amp]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, RandomSampler

from nas_core.data import CityscapesSegmentation, TrainTransform, generate_cityscapes
from nas_core.data.files import read_label_pair
from nas_core.engine.metrics import ConfusionMatrix


def build_model(space: str) -> tuple[torch.nn.Module, str, bool]:
    """The model to time, its description, and whether its forward takes (tau, generator)."""
    try:
        from nas_core.search.supernet import build_supernet
    except ImportError:  # FALLBACK while nas_core/search/supernet.py does not exist: a plain conv stand-in
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, 4, 1), torch.nn.ReLU(), torch.nn.Conv2d(32, 19, 1),
                                    torch.nn.Upsample(scale_factor=4, mode="bilinear"))
        return model, "FALLBACK conv stand-in (nas_core.search.supernet missing)", False
    return build_supernet(space, num_classes=19), f"nas_core.search.supernet.build_supernet({space!r})", True


def images_per_second(run_batch, batches: int, batch_size: int) -> float:
    run_batch()  # warm-up: worker start, allocator, first-call kernels
    start = time.perf_counter()
    for _ in range(batches):
        run_batch()
    return batches * batch_size / (time.perf_counter() - start)


def loader_images_per_second(loader: DataLoader, batches: int, batch_size: int) -> float:
    """Images/s of the loader's workers; they stop when this returns, before the model is timed, so they do not
    share the cores with it. The iterator (which owns the workers) lives only in this frame: the old inline form
    read it from a lambda after which the same scope `del`eted it, a name the lambda could no longer resolve."""
    iterator = iter(loader)
    return images_per_second(lambda: next(iterator), batches, batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--size", type=int, nargs=2, default=(1024, 2048))
    parser.add_argument("--patch", type=int, default=768)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--loader-batch", type=int, default=4)
    parser.add_argument("--loader-batches", type=int, default=24)
    parser.add_argument("--model-batch", type=int, default=2)
    parser.add_argument("--model-steps", type=int, default=2)
    parser.add_argument("--space", default="small")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true",
                        help="bf16 autocast for the model, as the paper's mixed precision")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch threads {torch.get_num_threads()}, device {device}, patch {args.patch}x{args.patch}")

    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        generate_cityscapes(root, num_train=args.images, num_val=0, num_extra=0, size=tuple(args.size), seed=0)
        generate_s = time.perf_counter() - start
        print(f"generated {args.images} frames of {args.size[0]}x{args.size[1]} in {generate_s:.1f} s "
              f"({args.images / generate_s:.2f} frames/s)")

        transform = TrainTransform(patch=(args.patch, args.patch))
        dataset = CityscapesSegmentation(root, "train", transform)
        # one process, per image: where the loader's time goes
        start = time.perf_counter()
        pairs = [read_label_pair(*dataset.files[i % len(dataset)]) for i in range(8)]
        decode_ms = (time.perf_counter() - start) / 8 * 1e3
        start = time.perf_counter()
        for image, label in pairs:
            transform(image, label)
        transform_ms = (time.perf_counter() - start) / 8 * 1e3
        print(f"per image in one process: decode+check {decode_ms:.1f} ms, transform {transform_ms:.1f} ms")
        # sampling with replacement keeps every worker busy, as on the 2975-frame Cityscapes train split;
        # a few-frame epoch would otherwise drain the pipeline at every epoch boundary
        sampler = RandomSampler(dataset, replacement=True, num_samples=10**6,
                                generator=torch.Generator().manual_seed(0))
        loader = DataLoader(dataset, batch_size=args.loader_batch, sampler=sampler, num_workers=args.workers,
                            pin_memory=device.type == "cuda")
        loader_ips = loader_images_per_second(loader, args.loader_batches, args.loader_batch)

    metric = ConfusionMatrix(device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(args.model_batch, 19, args.patch, args.patch, device=device, generator=generator)
    target = torch.randint(0, 19, (args.model_batch, args.patch, args.patch), device=device, generator=generator)

    def metric_step():
        metric.update(logits, target)  # includes the argmax over 19 classes, as in evaluation
        if device.type == "cuda":
            torch.cuda.synchronize()

    metric_ips = images_per_second(metric_step, 5, args.model_batch)

    model, description, is_supernet = build_model(args.space)
    model = model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-5)
    x = torch.randn(args.model_batch, 3, args.patch, args.patch, device=device, generator=generator)
    tau_generator = torch.Generator(device=device).manual_seed(1)

    def train_step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            out = model(x, tau=5.0, generator=tau_generator) if is_supernet else model(x)
        loss = F.cross_entropy(out.float(), target, ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    train_ips = images_per_second(train_step, args.model_steps, args.model_batch)

    print(f"model: {description}, batch {args.model_batch}, {'bf16 autocast' if args.amp else 'fp32'}")
    print(f"train loader ({args.workers} workers) : {loader_ips:8.2f} images/s")
    print(f"mIoU ConfusionMatrix.update     : {metric_ips:8.2f} images/s")
    print(f"forward+backward+SGD step       : {train_ips:8.2f} images/s")
    print(f"ratio loader / training         : {loader_ips / train_ips:8.1f}x")
    print(f"ratio metric / training         : {metric_ips / train_ips:8.1f}x")


if __name__ == "__main__":
    main()
