"""DVC's rewrite of dvc.lock after each stage (issue 14's orchestration share): plain DVC's round-trip parse
against cli/dvc_repro.py's libyaml parse, for a lock of the default run's shape (52 stages) with per-file code
deps (before issue 13) and with folder code deps (after), in one run. Each rewrite is what DVC does once per
stage: parse the whole lock, replace one stage's entry, dump it.

  .venv/bin/python benchmarks/bench_dvc_lock.py [--stages 52] [--file-deps 25] [--folder-deps 9] [--repeats 5]
"""
from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

from dvc.utils.serialize import _yaml
from dvc.utils.serialize._common import _modify_data


def _md5(*parts) -> str:
    return hashlib.md5(":".join(map(str, parts)).encode()).hexdigest()


def synthetic_lock(stages: int, code_deps: int, folders: bool) -> dict:
    """A lock shaped like the default run's: code deps, two data deps, a params section, two outputs."""
    out = {"schema": "2.0", "stages": {}}
    for s in range(stages):
        deps = [{"path": f"nas_core/{'pkg' if folders else 'module'}_{d}{'' if folders else '.py'}",
                 "hash": "md5", "md5": _md5(s, d) + (".dir" if folders else ""), "size": 4000 + 37 * d,
                 **({"nfiles": 6 + d % 5} if folders else {})} for d in range(code_deps)]
        deps += [{"path": f"outputs/experiments/e{s % 6}/input_{i}.json", "hash": "md5", "md5": _md5(s, "in", i),
                  "size": 900 + i} for i in range(2)]
        params = {"params.yaml": {f"search.{k}": v for k, v in
                                  (("alpha", 0.5), ("epochs", 2), ("tau_start", 5.0), ("tau_end", 1.0),
                                   ("grad_clip", None), ("patch", {"height": 96, "width": 192}))}}
        outs = [{"path": f"outputs/experiments/e{s % 6}/stage_{s}/{name}", "hash": "md5", "md5": _md5(s, name),
                 "size": 123456} for name in ("metrics.json", "model.pt")]
        out["stages"][f"stage_{s}@e{s % 6}"] = {"cmd": f"squeezenas stage_{s} --experiment e{s % 6}", "deps": deps,
                                                "params": params, "outs": outs}
    return out


def rewrite(path: Path, parse, stage: str) -> float:
    t0 = time.perf_counter()
    with _modify_data(path, parse, _yaml._dump) as data:
        data["stages"][stage] = dict(data["stages"][stage], cmd=data["stages"][stage]["cmd"] + " ")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", type=int, default=52)
    ap.add_argument("--file-deps", type=int, default=25, help="code deps per stage with per-file deps")
    ap.add_argument("--folder-deps", type=int, default=9, help="code deps per stage with folder deps")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    parsers = {"plain DVC (round-trip)": _yaml.parse_yaml_for_update,
               "cli/dvc_repro (libyaml)": lambda text, path: _yaml.parse_yaml(text, path, typ="safe")}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, deps, folders in (("file deps", a.file_deps, False), ("folder deps", a.folder_deps, True)):
            path = Path(tmp) / f"{label}.lock"
            _yaml.dump_yaml(path, synthetic_lock(a.stages, deps, folders))
            size = path.stat().st_size
            times = {name: [] for name in parsers}
            for r in range(a.repeats):  # interleaved, so both see the same machine
                for name, parse in parsers.items():
                    times[name].append(rewrite(path, parse, f"stage_{r % a.stages}@e{r % 6}"))
            for name in parsers:
                results[(label, name)] = statistics.median(times[name])
                print(f"{label:12s} {size / 1024:6.0f} KiB  {name:24s} {1000 * results[(label, name)]:7.0f} ms "
                      f"per stage, {a.stages * results[(label, name)]:5.1f} s per run of {a.stages} stages")
    base = results[("file deps", "plain DVC (round-trip)")]
    for key, value in results.items():
        print(f"  {key[0]} + {key[1]}: {base / value:4.1f}x faster than file deps + plain DVC")


if __name__ == "__main__":
    main()
