"""`squeezenas miou`: score a folder of Cityscapes-format predictions like the official evaluation script."""
from __future__ import annotations

import argparse
import json
import math
import sys


def add_parser(subparsers) -> None:
    """Register the `miou` subcommand on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "miou", help="class and category mIoU of label-id PNG predictions against Cityscapes gtFine",
        description="Each ground-truth image needs exactly one prediction under --predictions whose file name "
                    "starts with <city>_<seq>_<frame> and whose pixels are Cityscapes label ids (not train ids).")
    parser.add_argument("--cityscapes-root", required=True, help="folder holding gtFine/")
    parser.add_argument("--predictions", required=True, help="folder searched recursively for *.png predictions")
    parser.add_argument("--split", default="val", choices=("train", "val"))
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(func=run)


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value  # JSON has no NaN; null marks a class absent from GT and predictions


def run(args: argparse.Namespace) -> int:
    from nas_core.data.files import DatasetError
    from nas_core.engine.metrics import evaluate_prediction_folder

    try:
        result = evaluate_prediction_folder(args.cityscapes_root, args.predictions, split=args.split)
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    class_iou = dict(zip(result["class_names"], map(_finite, result["class_iou"])))
    category_iou = dict(zip(result["category_names"], map(_finite, result["category_iou"])))
    if args.json:
        print(json.dumps({"class_miou": _finite(result["class_miou"]),
                          "category_miou": _finite(result["category_miou"]),
                          "class_iou": class_iou, "category_iou": category_iou, "images": result["images"],
                          "pixels": result["pixels"], "split": args.split}))
        return 0
    for title, scores, mean in (("class", class_iou, result["class_miou"]),
                                ("category", category_iou, result["category_miou"])):
        print(f"{title:<16}IoU")
        for name, iou in scores.items():
            print(f"{name:<16}{'nan' if iou is None else f'{iou:.4f}'}")
        print(f"{'mean':<16}{mean:.4f}\n")
    print(f"{result['images']} images of split {args.split!r}")
    return 0
