"""nas_core holds the paper's ideas and never imports the orchestration stack; its phase packages import
only downwards."""
import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"prefect", "mlflow", "dvc"}
# nas_core's phase packages, lowest first: each may import itself, the packages before it and the top-level
# modules (config, io, params_file), never a package after it
ORDER = ("data", "space", "cost", "engine", "search", "select", "train", "report")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in `path`, at any depth (function-level too), relative ones
    resolved; `from a import b` gives a.b as well as a (b may be a module)."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            found += [(node.lineno, base)] + [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return found


def phase(module: str) -> str | None:
    """The phase package of a nas_core module (None: a top-level module or not nas_core)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "nas_core" and parts[1] in ORDER else None


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


def test_every_nas_core_package_has_its_place_in_the_order():
    packages = {p.parent.name for p in (ROOT / "nas_core").glob("*/__init__.py")}
    assert packages == set(ORDER), f"nas_core packages not in ORDER (or gone): {sorted(packages ^ set(ORDER))}"


@pytest.mark.parametrize("path", sorted((ROOT / "nas_core").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_nas_core_packages_import_only_downwards(path):
    own = phase(module_name(path))
    if own is None:
        return
    upward = sorted({f"line {line}: {name}" for line, name in imports(path)
                     if phase(name) and ORDER.index(phase(name)) > ORDER.index(own)})
    assert not upward, f"{path.relative_to(ROOT)} (in {own}) imports a later phase: {'; '.join(upward)}"


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
