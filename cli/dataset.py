"""`squeezenas dataset check ROOT`: read every file of a target dataset (folder format or Cityscapes), list every
problem naming its file, print the counts per split and class, and optionally write a preview grid."""
from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("dataset", help="tools for the target dataset: `dataset check ROOT`")
    actions = parser.add_subparsers(dest="action", required=True)
    check = actions.add_parser(
        "check", help="validate every file of a dataset and count its images and class pixels",
        description="Reads classes.yaml, every image and every mask; each problem (a mask without an image or the "
                    "reverse, sizes that differ, a colour or index not in classes.yaml, an unreadable file) is "
                    "listed with its file, and the command exits 2. Otherwise prints per split the image count, "
                    "the pixels of each class and the ignored share.")
    check.add_argument("root", help="the dataset folder (folder format: classes.yaml, images/, masks/)")
    check.add_argument("--format", default="folder", choices=("folder", "cityscapes"),
                       help="dataset format (default: folder)")
    check.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    check.add_argument("--preview", metavar="FILE",
                       help="write a PNG grid of images with their masks overlaid in the class colours, and a legend")
    check.set_defaults(func=run_check)


def _table(summary: dict) -> str:
    splits = list(summary["splits"])
    width = max([len("class"), *(len(n) for n in summary["classes"])]) + 2
    lines = [f"{summary['root']}: {summary['format']} format, {summary['num_classes']} classes", "",
             f"{'split':<{width}}{'images':>10}{'ignored':>10}"]
    lines += [f"{s:<{width}}{summary['splits'][s]:>10}{100 * summary['ignored_share'][s]:>9.2f}%" for s in splits]
    lines += ["", f"{'class':<{width}}" + "".join(f"{s + ' pixels':>20}" for s in splits)]
    lines += [f"{name:<{width}}" + "".join(f"{counts[s]:>20}" for s in splits)
              for name, counts in summary["class_pixels"].items()]
    return "\n".join(lines)


def run_check(args: argparse.Namespace) -> int:
    from nas_core.data.target import check_dataset, preview_png
    from nas_core.io import atomic_write_bytes

    summary, problems = check_dataset(args.format, args.root)
    if problems:
        print(f"squeezenas dataset check: error: {len(problems)} problem(s) in {args.root}"
              + (" (no preview written)" if args.preview else "") + ":", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    if args.preview:
        atomic_write_bytes(args.preview, preview_png(args.format, args.root))
        summary["preview"] = args.preview
    print(json.dumps(summary) if args.json else _table(summary)
          + (f"\n\npreview: {args.preview}" if args.preview else ""))
    return 0
