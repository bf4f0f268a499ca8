"""Shared fixtures: the reference material and one Prefect test server for the session."""
from __future__ import annotations

from pathlib import Path

import pytest

from tasks.telemetry import quiet_telemetry

ROOT = Path(__file__).resolve().parents[1]
# the authors' released weights (MIT) and their outputs on the test image ship with the project
REFERENCE = ROOT / "reference"

quiet_telemetry()

# the `sshd` fixture (a real OpenSSH server, module scope) for every test that names it, without each test file
# importing the fixture function and then shadowing it with the parameter of the same name
pytest_plugins = ["tests.sshd"]


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """`reference/` of this project: weights/ (the authors' three networks) and outputs/ (their logits)."""
    missing = [p for p in (REFERENCE / "weights" / "LICENSE", REFERENCE / "outputs" / "reference_outputs.json")
               if not p.is_file()]
    assert not missing, f"reference material missing from the project: {missing}"  # never a skip
    return REFERENCE


@pytest.fixture(scope="session")
def prefect_harness():
    """Prefect's test server on a temporary SQLite database, one for the whole session (as Prefect's testing guide
    recommends): started by the first test that asks for it, as each start costs seconds."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):  # the shared CPU can be slow to start it
        yield
