"""nas_core holds the paper's ideas and never imports the orchestration stack."""
import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"prefect", "mlflow", "dvc"}


@pytest.mark.parametrize("path", sorted((ROOT / "nas_core").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_nas_core_does_not_import_orchestration(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


def test_only_tracking_imports_mlflow():
    for path in (ROOT / "tasks").rglob("*.py"):
        if path.name == "tracking.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(m.split(".")[0] == "mlflow" for m in mods), f"{path} imports mlflow"


def test_nothing_reads_outside_the_repository():
    """A user's clone has no ../shared beside it: no product file, config or test may point there."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    offenders = []
    for name in tracked:
        path = ROOT / name
        if path.suffix not in {".py", ".yaml", ".yml", ".toml", ".sh", ".cfg"} and path.name != "Makefile":
            continue
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if "../shared" in text or "SQUEEZENAS_SHARED" in text:
            offenders.append(name)
    offenders = [o for o in offenders if o != "tests/test_boundaries.py"]
    assert not offenders, f"files pointing outside the repository: {offenders}"
