"""The whole repository passes `ruff check` under pyproject.toml's [tool.ruff] settings, with the ruff version the
dev extra pins: a lint finding fails the suite like any other regression, instead of piling up until someone runs
ruff by hand. Nothing is excluded here; a rule that does not fit a file is ignored in pyproject.toml, with why."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pinned_ruff() -> str:
    """The version in the dev extra (`ruff==X`): the rules a ruff release enables or changes differ between them."""
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    pins = [spec.split("==", 1)[1] for spec in dev if re.match(r"ruff\s*==", spec)]
    assert len(pins) == 1, f"pyproject.toml: [project.optional-dependencies] dev pins ruff {len(pins)} times: {dev}"
    return pins[0].strip()


def ruff(*args: str) -> subprocess.CompletedProcess:
    """The ruff of this interpreter's environment (installed by the dev extra); --no-cache: write nothing here."""
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_the_repository_is_ruff_clean():
    version = ruff("--version")
    assert version.returncode == 0, f"ruff is not installed (pip install -e '.[dev]'): {version.stderr}"
    installed = version.stdout.split()[-1]
    assert installed == pinned_ruff(), f"ruff {installed} installed, pyproject.toml pins {pinned_ruff()}"
    check = ruff("check", "--no-cache", "--output-format", "concise", ".")
    if check.returncode != 0:
        pytest.fail(f"`ruff check .` in {ROOT}:\n{check.stdout}{check.stderr}", pytrace=False)
