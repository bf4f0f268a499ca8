"""`squeezenas run`'s DVC (cli/dvc_repro.py): the dvc.lock it writes is byte for byte plain DVC's, through a first
run, a params change that reruns part of the pipeline, a foreach group and a failed stage."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import dvc
import pytest

from cli.dvc_repro import CHECKED, fast_lock_installed
from tests.repo_copy import ROOT, run, stage_env

DVC_YAML = """\
stages:
  make:
    cmd: python src/make.py
    deps:
      - src
    params:
      - make
    outs:
      - a.txt
  chain:
    foreach: ${experiments}
    do:
      cmd: python src/chain.py ${key} ${item.alpha}
      deps:
        - a.txt
        - src/chain.py
      params:
        - experiments.${key}.alpha
      outs:
        - ${key}.txt
  report:
    cmd: python src/report.py
    deps:
      - one.txt
      - two.txt
    params:
      - report
"""
SOURCES = {
    "make.py": "import yaml\nopen('a.txt', 'w').write(str(yaml.safe_load(open('params.yaml'))['make']))\n",
    "chain.py": "import sys\nopen(sys.argv[1] + '.txt', 'w').write(open('a.txt').read() + sys.argv[2])\n",
    "report.py": "import sys, yaml\nsys.exit(int(yaml.safe_load(open('params.yaml'))['report']['fail']))\n",
}
PARAMS = "make: {n: 1, note: first}\nexperiments:\n  one: {alpha: 0.5}\n  two: {alpha: 1.0}\nreport: {fail: false}\n"


def _repo(path: Path) -> Path:
    path.mkdir()
    (path / "src").mkdir()
    for name, text in SOURCES.items():
        (path / "src" / name).write_text(text)
    (path / "dvc.yaml").write_text(DVC_YAML)
    (path / "params.yaml").write_text(PARAMS)
    env = stage_env(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    run(["git", "init", "-q", "-b", "main"], path, env)
    run(["dvc", "init", "-q"], path, env)
    return path


def _both(plain: Path, ours: Path, *args: str, ok: bool = True) -> None:
    env = stage_env(PYTHONPATH=str(ROOT))
    ours_cmd = [sys.executable, "-m", "cli.dvc_repro", "repro", *args]
    for repo, cmd in ((plain, ["dvc", "repro", *args]), (ours, ours_cmd)):
        if ok:
            run(cmd, repo, env)
        else:
            with pytest.raises(AssertionError, match="failed to reproduce 'report'"):
                run(cmd, repo, env)
    assert (ours / "dvc.lock").read_bytes() == (plain / "dvc.lock").read_bytes()


def test_the_pinned_dvc_gets_the_fast_lock_parse():
    assert dvc.__version__ == CHECKED, "constraints.txt moved DVC on: check cli/dvc_repro.py against it"
    assert fast_lock_installed()


def test_the_lock_is_byte_for_byte_plain_dvcs(tmp_path):
    plain, ours = _repo(tmp_path / "plain"), _repo(tmp_path / "ours")
    _both(plain, ours)
    for repo in (plain, ours):  # one experiment's alpha: its chain stage and the report rerun
        (repo / "params.yaml").write_text(PARAMS.replace("alpha: 0.5", "alpha: 0.25"))
        (repo / "src" / "chain.py").write_text(SOURCES["chain.py"] + "# edited\n")
    _both(plain, ours)
    for repo in (plain, ours):  # a stage that fails: the stages before it are locked, it is not
        (repo / "params.yaml").write_text(PARAMS.replace("fail: false", "fail: true").replace("n: 1", "n: 2"))
    _both(plain, ours, ok=False)
    shutil.rmtree(ours / ".dvc" / "cache")  # and a forced rerun of one stage
    _both(plain, ours, "--force", "make", "--single-item")
