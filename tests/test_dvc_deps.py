"""Every stage's code deps in dvc.yaml cover the code the stage runs, so `dvc repro` never reports results the
current code would not produce (issue 13).

One `squeezenas run` (dvc repro of every stage) of the tiny configuration in a repository copy, each stage in its
own process (SQUEEZENAS_FORKSERVER=off: a forked child would hold the fork server's modules). A `sitecustomize`
on PYTHONPATH records, in every Python process at exit, the first-party files (nas_core/, tasks/, flows/, cli/) in
`sys.modules`; a stage's record is its command's process plus its descendants (torchrun workers). Each file must
be a dep of that stage in dvc.lock (the file, or a folder holding it), and each code dep must hold a file the
stage loaded. Then edits to the mIoU and the training transform must make the stages that use them stale."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from tasks.dvc_files import expanded_stages
from tests.repo_copy import ROOT, make_repo_copy, run, stage_env, write_tiny_params

PACKAGES = ("nas_core", "tasks", "flows", "cli")
TRAIN_STAGES = {"pretrain_imagenet", "pretrain_coco", "train_coarse", "train_fine"}
# the README's promise: editing the mIoU makes the stages that compute it stale, the training transform those
# that train
SHARED_CODE = [("nas_core/engine/metrics.py", {"sample", "benchmark"} | TRAIN_STAGES),
               ("nas_core/data/transforms.py", {"search"} | TRAIN_STAGES)]

# Written as sitecustomize.py into a folder on the stage processes' PYTHONPATH (outside the repository copy, so
# it is neither code of the project nor a dep). dvc's own processes write records too; they match no stage.
TRACER = '''
import atexit, json, os, sys


def _record():
    root = os.environ["DEPS_TRACE_ROOT"]
    files, stray = set(), set()
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if not path or (name.split(".")[0] not in {packages!r} and name != "__main__"):
            continue  # __main__: a first-party file run as a script (the profiling runner) or with -m
        path = os.path.realpath(path)
        if path.startswith(root + os.sep):
            files.add(os.path.relpath(path, root))
        elif name != "__main__":  # the squeezenas and dvc scripts are outside
            stray.add(name + " from " + path)
    record = dict(pid=os.getpid(), ppid=os.getppid(), argv=sys.argv, files=sorted(files), stray=sorted(stray))
    out = os.path.join(os.environ["DEPS_TRACE_DIR"], str(os.getpid()))
    with open(out + ".tmp", "w") as f:
        json.dump(record, f)
    os.replace(out + ".tmp", out + ".json")


atexit.register(_record)
'''.format(packages=set(PACKAGES))


@pytest.mark.parametrize("edited, users", SHARED_CODE)
def test_dvc_yaml_makes_the_users_of_shared_code_depend_on_it(edited, users):
    """The cheap check of dvc.yaml alone (the slow tests below run the pipeline)."""
    stages = expanded_stages(ROOT)
    groups_of = {name: name.split("@")[0] for name in stages}
    assert users <= set(groups_of.values())
    missing = sorted(name for name, group in groups_of.items()
                     if group in users and not covered(edited, stages[name]["deps"]))
    assert not missing, f"{edited} is not among the deps of {missing}"


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """(repo, {stage: set of first-party files its processes had loaded}) after one pipeline run."""
    base = tmp_path_factory.mktemp("deps")
    repo = make_repo_copy(base / "repo")
    write_tiny_params(repo)
    run(["git", "commit", "-qam", "tiny params"], repo)
    tracer, records = base / "tracer", base / "records"
    tracer.mkdir()
    records.mkdir()
    (tracer / "sitecustomize.py").write_text(TRACER)
    env = stage_env(PYTHONPATH=f"{tracer}{os.pathsep}{repo}", DEPS_TRACE_ROOT=os.path.realpath(repo),
                    DEPS_TRACE_DIR=str(records), SQUEEZENAS_FORKSERVER="off")
    run(["squeezenas", "run"], repo, env, timeout=1800)  # one Prefect server for every stage's flow
    return repo, stage_files(repo, [json.loads(p.read_text()) for p in records.glob("*.json")])


def stage_files(repo: Path, records: list[dict]) -> dict[str, set[str]]:
    """Each stage's files: those of the process running its command and of that process's descendants."""
    commands = {name: shlex.split(s["cmd"]) for name, s in expanded_stages(repo).items()}
    by_pid = {r["pid"]: r for r in records}
    stray = [s for r in records for s in r["stray"]]
    assert not stray, f"first-party modules loaded from outside the repository copy: {stray[:5]}"

    def stage_of(record: dict | None) -> str | None:
        while record is not None:
            argv = [Path(record["argv"][0]).name, *record["argv"][1:]] if record["argv"] else []
            for name, cmd in commands.items():
                if argv == cmd:
                    return name
            record = by_pid.get(record["ppid"])
        return None

    files: dict[str, set[str]] = {}
    for record in records:
        stage = stage_of(record)
        if stage is not None:
            files.setdefault(stage, set()).update(record["files"])
    assert set(files) == set(commands), f"no record of stages {sorted(set(commands) - set(files))}"
    return files


def locked_deps(repo: Path) -> dict[str, list[str]]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {name: [d["path"] for d in stage.get("deps", [])] for name, stage in lock["stages"].items()}


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def stale_stages(repo: Path) -> set[str]:
    out = subprocess.run(["dvc", "status", "--json"], cwd=repo, env=stage_env(), capture_output=True, text=True,
                         check=True).stdout
    return {name.split(":")[-1] for name in json.loads(out or "{}")}


def groups(stages: set[str]) -> set[str]:
    """search@lat_small -> search: the stage group of each (foreach) stage."""
    return {s.split("@")[0] for s in stages}


@pytest.mark.slow
def test_every_stage_depends_on_the_code_it_runs(traced):
    repo, files = traced
    deps = locked_deps(repo)
    assert all("cli/main.py" in f for f in files.values()), "the tracer did not see the stage commands' modules"
    missing = {stage: sorted(f for f in used if not covered(f, deps[stage])) for stage, used in files.items()}
    missing = {stage: paths for stage, paths in missing.items() if paths}
    assert not missing, "code a stage runs that is not among its deps in dvc.yaml:\n" + "\n".join(
        f"  {stage}: {', '.join(paths)}" for stage, paths in sorted(missing.items()))
    # and no more: a code dep of which the stage loads nothing would make it stale for nothing
    unused = {stage: sorted(d for d in deps[stage] if d.split("/")[0] in PACKAGES
                            and not any(covered(f, [d]) for f in used)) for stage, used in files.items()}
    unused = {stage: paths for stage, paths in unused.items() if paths}
    assert not unused, "code deps in dvc.yaml of which the stage loads nothing:\n" + "\n".join(
        f"  {stage}: {', '.join(paths)}" for stage, paths in sorted(unused.items()))


@pytest.mark.slow
@pytest.mark.parametrize("edited, must_be_stale", SHARED_CODE)
def test_editing_shared_code_makes_its_users_stale(traced, edited, must_be_stale):
    repo, files = traced
    assert stale_stages(repo) == set(), "a fresh repro should leave nothing stale"
    path = repo / edited
    original = path.read_text()
    try:
        path.write_text(original + "\n# an edit\n")
        stale = stale_stages(repo)
    finally:
        path.write_text(original)
    users = {stage for stage, used in files.items() if edited in used}
    assert must_be_stale <= groups(users), f"{edited} is no longer used by {sorted(must_be_stale - groups(users))}"
    assert users <= stale, f"editing {edited} leaves {sorted(users - stale)} up to date"
