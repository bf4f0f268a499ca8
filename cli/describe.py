"""`squeezenas describe`: MACs and parameters of a published network or an architecture file."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from nas_core.space.spaces import INPUT_MULTIPLE, NUM_CLASSES, Architecture


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--input-size {text!r}: expected HEIGHTxWIDTH, e.g. 1024x2048") from None
    if h <= 0 or w <= 0 or h % INPUT_MULTIPLE or w % INPUT_MULTIPLE:
        raise ValueError(f"--input-size {text!r}: height and width must be positive multiples of {INPUT_MULTIPLE}")
    return h, w


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def resolve_architecture(spec: str) -> tuple[str, Architecture]:
    """An architecture JSON file, inline JSON, or a published name (checked last: it imports torch)."""
    if spec.lstrip().startswith("{"):
        return "inline", Architecture.from_json(spec)
    path = Path(spec)
    if path.is_file():
        return path.stem, Architecture.load(path)
    from nas_core.space.zoo import PUBLISHED

    if spec in PUBLISHED:
        return spec, PUBLISHED[spec]
    raise ValueError(f"{spec!r} is neither a published network ({', '.join(PUBLISHED)}) nor an architecture JSON file")


def describe(arch: Architecture, input_size: tuple[int, int], num_classes: int) -> dict:
    from nas_core.cost.macs import build_cost_table

    table = build_cost_table(arch.space, input_size, num_classes)
    blocks = table[table["kind"] == "block"]
    chosen = [blocks[(blocks["block"] == i) & (blocks["candidate"] == c)].iloc[0] for i, c in enumerate(arch.choices)]
    fixed = table[table["kind"] == "fixed"]
    rows = [dict(part=r["candidate"], c_in=int(r["c_in"]), c_out=int(r["c_out"]), stride=int(r["stride"]),
                 out=f"{r['out_h']}x{r['out_w']}", macs=int(r["macs"]), params=int(r["params"]))
            for r in [fixed.iloc[0]] + chosen + [fixed.iloc[1], fixed.iloc[2]]]
    for i, r in enumerate(rows[1:-2]):
        r["block"] = i
    return {"space": arch.space, "choices": list(arch.choices), "input_size": list(input_size),
            "num_classes": num_classes, "macs": sum(r["macs"] for r in rows),
            "params": sum(r["params"] for r in rows), "layers": rows}


def run(args) -> int:
    size = parse_size(args.input_size)  # checked before the architecture, which may import torch
    name, arch = resolve_architecture(args.network)
    info = describe(arch, size, args.num_classes)
    info["name"] = name
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"{name} ({arch.space} space) at {args.input_size}, {args.num_classes} classes")
    print(f"{'layer':>5}  {'part':<13} {'c_in':>5} {'c_out':>5} {'s':>2} {'output':>10} {'MMACs':>10} {'params':>9}")
    for r in info["layers"]:
        label = str(r.get("block", "-"))
        print(f"{label:>5}  {r['part']:<13} {r['c_in']:>5} {r['c_out']:>5} {r['stride']:>2} {r['out']:>10} "
              f"{r['macs'] / 1e6:>10.1f} {r['params']:>9,}")
    print(f"total: {info['macs'] / 1e9:.3f} GMACs, {info['params'] / 1e6:.3f} M parameters")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("describe", help="MACs and parameters of a network, per block")
    p.add_argument("network", metavar="NAME_OR_ARCH_JSON", help="a published network name or an architecture JSON file")
    p.add_argument("--input-size", default="1024x2048", help="HEIGHTxWIDTH (default 1024x2048)")
    p.add_argument("--num-classes", type=positive_int, default=NUM_CLASSES)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)
