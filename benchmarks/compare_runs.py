"""Compare the artifacts of two pipeline runs (e.g. before and after a restructure, issue 13): for each file
under both runs' outputs/, whether it is bitwise equal, and for one that is not the largest absolute
difference of its numbers (parquet and CSV columns, JSON values, tensors of a .pt file) and where it is.

  .venv/bin/python benchmarks/compare_runs.py DIR_A DIR_B [--outputs outputs] [--ignore REGEX]

--ignore names the values that differ from run to run of the same code (timings, process ids): a file whose
other values are all equal is reported as "equal but ignored" with the keys that differed.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd


def numbers_of_json(value, key: str = "") -> dict[str, object]:
    """Flattened leaves of a JSON value: {"rows[3].latency_ms": 1.2, ...}."""
    if isinstance(value, dict):
        return {k: v for name, item in value.items() for k, v in numbers_of_json(item, f"{key}.{name}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in numbers_of_json(item, f"{key}[{i}]").items()}
    return {key: value}


def leaves_of_torch(value, key: str = "") -> dict[str, object]:
    import torch

    if isinstance(value, dict):
        return {k: v for name, item in value.items() for k, v in leaves_of_torch(item, f"{key}.{name}").items()}
    if isinstance(value, (list, tuple)):
        return {k: v for i, item in enumerate(value) for k, v in leaves_of_torch(item, f"{key}[{i}]").items()}
    if isinstance(value, torch.Tensor):
        return {key: value.detach().cpu().double().numpy() if value.is_floating_point() else value.cpu().numpy()}
    return {key: value}


def leaves_of_table(df: pd.DataFrame) -> dict[str, object]:
    return {f"{col}[{i}]": v for col in df.columns for i, v in enumerate(df[col].tolist())}


def leaves(path: Path) -> dict[str, object] | None:
    """The file's values by key, or None for a file compared by its bytes only (images, ONNX)."""
    suffix = path.suffix
    if suffix == ".parquet":
        return leaves_of_table(pd.read_parquet(path))
    if suffix == ".csv":
        return leaves_of_table(pd.read_csv(path))
    if suffix == ".json":
        return numbers_of_json(json.loads(path.read_text()))
    if suffix == ".jsonl":
        return numbers_of_json([json.loads(line) for line in path.read_text().splitlines() if line.strip()])
    if suffix == ".pt":
        import torch

        return leaves_of_torch(torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=False))
    return None


def difference(a, b) -> float:
    """Largest absolute difference of two leaves (inf: not comparable, e.g. other text or shape)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            return math.inf
        if a.dtype.kind in "fciub" and b.dtype.kind in "fciub":
            a, b = a.astype(float), b.astype(float)
            if not np.array_equal(np.isnan(a), np.isnan(b)):
                return math.inf
            return float(np.nanmax(np.abs(a - b), initial=0.0))  # NaN where both are NaN: equal
        return 0.0 if np.array_equal(a, b) else math.inf
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if math.isnan(a) and math.isnan(b):
            return 0.0
        return abs(float(a) - float(b))
    return 0.0 if a == b else math.inf


def compare(a: Path, b: Path, ignore: re.Pattern | None = None) -> tuple[str, str]:
    """(verdict, detail) of one file in both runs; values whose key matches `ignore` do not count."""
    if a.read_bytes() == b.read_bytes():
        return "bitwise", ""
    la, lb = leaves(a), leaves(b)
    if la is None or lb is None:
        return "differs", "bytes differ (not a table, JSON or tensor file)"
    if set(la) != set(lb):
        only = sorted(set(la) ^ set(lb))
        return "differs", f"keys differ, e.g. {only[:3]}"
    diffs = {k: difference(la[k], lb[k]) for k in la}
    unequal = {k: d for k, d in diffs.items() if d != 0.0}
    if not unequal:
        return "equal values", "bytes differ, every value equal"
    ignored = sorted(k for k in unequal if ignore and ignore.search(k))
    if len(ignored) == len(unequal):
        return "equal but ignored", f"every value equal but {len(ignored)} ignored: {', '.join(ignored[:6])}"
    unequal = {k: d for k, d in unequal.items() if k not in ignored}
    worst = max(unequal, key=unequal.get)
    return "differs", (f"{len(unequal)} of {len(diffs)} values differ; max abs diff {unequal[worst]:.6g} at {worst} "
                       f"(e.g. {', '.join(sorted(unequal)[:4])})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--outputs", default="outputs", help="the folder of artifacts inside each run (default outputs)")
    ap.add_argument("--ignore", type=re.compile, default=None, metavar="REGEX",
                    help="keys of values that differ from run to run (e.g. 'seconds|latency|pid')")
    ap.add_argument("--list-only", type=int, default=10, metavar="N",
                    help="list at most N files found in one run only (default 10)")
    args = ap.parse_args()
    root_a, root_b = args.a / args.outputs, args.b / args.outputs
    files_a = {p.relative_to(root_a) for p in root_a.rglob("*") if p.is_file()}
    files_b = {p.relative_to(root_b) for p in root_b.rglob("*") if p.is_file()}
    counts: dict[str, int] = {}
    for rel in sorted(files_a & files_b):
        verdict, detail = compare(root_a / rel, root_b / rel, args.ignore)
        counts[verdict] = counts.get(verdict, 0) + 1
        print(f"{verdict:<13} {rel}" + (f"  {detail}" if detail else ""))
    only = sorted(files_a ^ files_b)
    for rel in only[:args.list_only]:
        print(f"{'only in ' + ('A' if rel in files_a else 'B'):<13} {rel}")
    if len(only) > args.list_only:
        print(f"... and {len(only) - args.list_only} more files in one run only (--list-only N lists more)")
    print(", ".join(f"{n} {v}" for v, n in counts.items()) + f", {len(files_a ^ files_b)} in one run only")


if __name__ == "__main__":
    main()
