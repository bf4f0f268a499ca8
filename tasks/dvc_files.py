"""What DVC knows about the pipeline's artifacts, read from dvc.yaml, dvc.lock and params.yaml (no DVC
import: a stage runs while `dvc repro` holds the repository lock). The DVC md5 is the one hash of an
artifact in the lineage: dvc_md5 computes it as DVC 3 does, so a stage can tag its own outputs before
`dvc repro` writes them into dvc.lock."""
from __future__ import annotations

import configparser
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml

DATA_STAGE = "data"  # its outputs are the datasets, logged as MLflow dataset inputs where they are read
METRICS = "metrics.json"  # the summary a stage writes into its output folder (a DVC metrics file)
# what the select stage hands on: the training stages read the architecture, the benchmark how it was chosen
CHOSEN_ARCHITECTURE, SELECT_METRICS = "chosen_architecture.json", "select_metrics.json"


def _interpolate(text: str, params: dict) -> str:
    """Resolve dvc.yaml's ${a.b} references against params.yaml."""
    def lookup(m: re.Match) -> str:
        node: Any = params
        for k in m[1].split("."):
            node = node[k]
        return str(node)
    return re.sub(r"\$\{([^}]+)\}", lookup, text)


def _load(root: Path, name: str) -> dict:
    try:
        # libyaml's loader: PyYAML's pure-Python one spent ~0.4 s of every stage on dvc.lock
        return yaml.load((root / name).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    except FileNotFoundError:
        return {}


def _paths(entries: list, params: dict) -> list[str]:
    out = []
    for e in entries or []:
        path = e if isinstance(e, str) else next(iter(e))
        out.append(_interpolate(path, params).rstrip("/"))
    return out


def _substitute(node: Any, key: str, item: Any) -> Any:
    """A foreach template with ${key} and ${item.x} resolved (the rest is resolved against params)."""
    if isinstance(node, dict):
        return {_substitute(k, key, item): _substitute(v, key, item) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, key, item) for v in node]
    if isinstance(node, str):
        return re.sub(r"\$\{item\.([^}]+)\}", lambda m: _interpolate(m[0], {"item": item}),
                      node.replace("${key}", key))
    return node


def _expand(stages: dict, params: dict) -> dict:
    """dvc.yaml's stages with each `foreach` group expanded into its `group@key` stages, as DVC names them."""
    out = {}
    for name, entry in stages.items():
        if isinstance(entry, dict) and "foreach" in entry:
            items = entry["foreach"]
            if isinstance(items, str):
                m = re.fullmatch(r"\$\{([^}]+)\}", items.strip())
                node: Any = params
                for k in (m[1].split(".") if m else []):
                    node = (node or {}).get(k)
                items = node or {}
            pairs = items.items() if isinstance(items, dict) else ((str(v), v) for v in items)
            for key, item in pairs:
                out[f"{name}@{key}"] = _substitute(entry["do"], str(key), item)
        else:
            out[name] = entry
    return out


def _stages(root: Path) -> tuple[dict, dict]:
    params = _load(root, "params.yaml")
    return _expand(_load(root, "dvc.yaml").get("stages", {}), params), params


def expanded_stages(root: str | Path = ".") -> dict[str, dict]:
    """dvc.yaml's stages by the names DVC gives them (foreach groups expanded: search@lat_small), in the
    file's (pipeline) order."""
    return _stages(Path(root))[0]


def _outs(entry: dict | None, params: dict) -> list[str]:
    entry = entry or {}
    return _paths((entry.get("outs") or []) + (entry.get("metrics") or []) + (entry.get("plots") or []), params)


def stage_outputs(stage: str, root: str | Path = ".") -> list[str]:
    """Every output path of `stage` (outs, metrics, plots), as dvc.lock will name them."""
    stages, params = _stages(Path(root))
    return _outs(stages.get(stage), params)


def _overlaps(dep: str, out: str) -> bool:
    """A dependency reads an output: the output itself, a file inside it, or a folder holding it (the
    report's ${paths.benchmark} holds every experiment's benchmark)."""
    return dep == out or dep.startswith(out + "/") or out.startswith(dep + "/")


def locked_outputs(root: str | Path = ".") -> dict[str, tuple[str, str]]:
    """{output path: (producing stage, md5)} of every output dvc.lock records."""
    lock = _load(Path(root), "dvc.lock")
    return {out["path"].rstrip("/"): (name, out.get("md5") or out.get("hash", ""))
            for name, entry in (lock.get("stages") or {}).items() for out in entry.get("outs", [])}


def dvc_inputs(stage: str, root: str | Path = ".") -> dict[str, tuple[str, str]]:
    """{output path: (producing stage, md5)} for each dependency of `stage`, as dvc.lock records it."""
    stages, params = _stages(Path(root))
    deps = _paths((stages.get(stage) or {}).get("deps"), params)
    produced = locked_outputs(root)
    inputs = {}
    for dep in deps:  # a dependency is an output, a file inside one, or a folder holding outputs
        for out, origin in produced.items():
            if _overlaps(dep, out):
                inputs[out] = origin
    return inputs


def dvc_default_remote(root: str | Path = ".") -> str | None:
    """'NAME URL' of the DVC default remote in .dvc/config (local config overrides), or None."""
    config = configparser.ConfigParser()
    config.read([Path(root) / ".dvc" / "config", Path(root) / ".dvc" / "config.local"])
    name = config.get("core", "remote", fallback=None)
    if not name:
        return None
    url = config.get(f"'remote \"{name}\"'", "url", fallback="?")
    return f"{name} {url}"


def _file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dvc_md5(path: str | Path) -> str:
    """The md5 DVC 3 records for `path`: the content md5 of a file; for a folder, the md5 of the JSON
    list of its files' {md5, relpath} sorted by relpath, suffixed '.dir' (dvc_data's Tree.digest)."""
    root = Path(path)
    if root.is_file():
        return _file_md5(root)
    entries = sorted(({"md5": _file_md5(f), "relpath": f.relative_to(root).as_posix()}
                      for f in root.rglob("*") if f.is_file()), key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"
