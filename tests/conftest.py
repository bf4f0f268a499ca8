"""Shared fixtures: paths to the reference material and a tiny search space for fast tests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the authors' released weights (MIT) and their outputs on the test image ship with the project
REFERENCE = ROOT / "reference"

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """`reference/` of this project: weights/ (the authors' three networks) and outputs/ (their logits)."""
    missing = [p for p in (REFERENCE / "weights" / "LICENSE", REFERENCE / "outputs" / "reference_outputs.json")
               if not p.is_file()]
    assert not missing, f"reference material missing from the project: {missing}"  # never a skip
    return REFERENCE
