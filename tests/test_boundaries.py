"""nas_core holds the paper's ideas and never imports the orchestration stack; its phase packages import
only downwards."""
import ast
import subprocess
import sys
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


def dynamic_imports(path: Path, modules: set[str]) -> list[tuple[int, str]]:
    """In a module that imports by name (importlib.import_module), the first-party modules its strings name
    ("cli.describe", "flows.data:data_flow"): the imports it makes at run time."""
    tree = ast.parse(path.read_text())
    if not any(isinstance(n, ast.Attribute) and n.attr == "import_module" for n in ast.walk(tree)):
        return []
    return [(n.lineno, n.value.split(":")[0]) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.split(":")[0] in modules]


def import_graph(packages: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """{module: {first-party module it imports: line}} over every module of `packages` (an import of a name
    from a module counts as an import of that module)."""
    paths = {module_name(p): p for package in packages for p in (ROOT / package).rglob("*.py")}
    graph = {}
    for module, path in paths.items():
        edges = {}
        for line, name in imports(path) + dynamic_imports(path, set(paths)):
            while name and name not in paths:
                name = name.rpartition(".")[0]
            if name and name != module:
                edges.setdefault(name, line)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        stack.append(module)
        for target in graph[module]:
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[module] = "done"
        stack.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


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


def test_no_import_cycle_among_the_project_modules():
    """Module-level and function-level imports alike, and the modules a module imports by name."""
    graph = import_graph(("nas_core", "tasks", "flows", "cli"))
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(
        f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def test_no_module_where_it_could_hide_the_standard_library():
    """The packages import from the repository root, and the profiling runner runs by its path (its folder first
    on sys.path): a module named like the standard library's there hides it (7c7738e: flows/profile.py and
    torch's `import cProfile`)."""
    runner = ROOT / "nas_core" / "cost" / "runner.py"
    assert runner.is_file()
    names = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    names |= {p.stem for p in runner.parent.glob("*.py")}
    assert not names & sys.stdlib_module_names, sorted(names & sys.stdlib_module_names)


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


def test_the_telemetry_switches_are_written_once():
    """tasks/telemetry.py names them; scripts/env.sh (a shell script cannot import them) exports the same."""
    from tasks.telemetry import TELEMETRY_OFF

    exported = dict(line.removeprefix("export ").split("=", 1)
                    for line in (ROOT / "scripts" / "env.sh").read_text().splitlines() if line.startswith("export "))
    assert exported == TELEMETRY_OFF
    mine = {ROOT / "tasks" / "telemetry.py", Path(__file__).resolve()}
    others = [str(p.relative_to(ROOT)) for package in ("nas_core", "tasks", "flows", "cli", "tests")
              for p in (ROOT / package).rglob("*.py")
              if p not in mine and any(k in p.read_text() for k in TELEMETRY_OFF)]
    assert not others, f"telemetry switches spelt out again in {others}"
