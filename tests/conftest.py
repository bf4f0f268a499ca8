"""Shared fixtures: paths to the reference material and a tiny search space for fast tests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SQUEEZENAS_SHARED", ROOT.parent / "shared"))

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "reference").is_dir():
        pytest.skip(f"reference material not found at {SHARED} (set SQUEEZENAS_SHARED)")
    return SHARED
