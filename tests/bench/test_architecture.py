"""The layout's rules (DESIGN section 3), checked on the source: the core never imports method
packages, knows nothing of the synthetic world where it must not, reads the cache location in one
place, and has no import circles among module-level imports."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("bench", "methods", "metrics", "leaderboard")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """Absolute module names imported by ``path`` (module level only, or everywhere), leaving
    out ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.If):
                test = ast.unparse(node.test)
                if "TYPE_CHECKING" not in test:
                    visit(node.body)
                    visit(node.orelse)
            elif isinstance(node, (ast.Try,)):
                visit(node.body)
                for h in node.handlers:
                    visit(h.body)
            elif not top_level_only and hasattr(node, "body"):
                for field in ("body", "orelse", "finalbody"):
                    visit(getattr(node, field, []) or [])

    visit(tree.body)
    return found


def test_the_core_never_imports_method_packages() -> None:
    offenders = {
        name: sorted(
            i for i in _imports(path, top_level_only=False) if i.split(".")[0] == "methods"
        )
        for name, path in _modules().items()
        if name.split(".")[0] == "bench"
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_targets_probes_and_milannotations_know_nothing_of_the_synthetic_world() -> None:
    for name, path in _modules().items():
        if name in ("bench.targets", "bench.milannotations") or name.startswith("bench.probes"):
            imported = _imports(path, top_level_only=False)
            assert not [i for i in imported if i.startswith("bench.synth")], name
            assert "bench.synth" not in path.read_text(), name


def _reads_cache_variable(text: str) -> bool:
    """A line that reads the environment and names the cache variable (help texts that only
    mention it do not count)."""
    return any(
        ("environ" in line or "getenv" in line)
        and ("BENCH_CACHE_DIR" in line or "ENV_CACHE_DIR" in line)
        for line in text.splitlines()
    )


def test_only_the_cache_module_reads_the_cache_variable() -> None:
    readers = [name for name, path in _modules().items() if _reads_cache_variable(path.read_text())]
    assert readers == ["bench.cache"]
    assert _reads_cache_variable('root = os.environ.get("BENCH_CACHE_DIR")')
    assert not _reads_cache_variable('help="default: $BENCH_CACHE_DIR"')


def _places_cache_folders(text: str) -> bool:
    """A line that builds a path to the cache's ``datasets`` or ``models`` folder itself."""
    return re.search(r'/\s*"(datasets|models)"', text) is not None


def test_only_the_cache_module_places_its_datasets_and_models_folders() -> None:
    """Everything else asks the ``Cache`` (``datasets_dir()``, ``models_dir()``)."""
    placers = [name for name, path in _modules().items() if _places_cache_folders(path.read_text())]
    assert placers == ["bench.cache"]
    assert _places_cache_folders('return Path(cache_root) / "datasets" / NAME')
    assert not _places_cache_folders('state.setdefault("models", {})')


def test_the_leaderboard_imports_only_results_schema_and_errors() -> None:
    allowed = {"bench", "bench.results", "bench.schema", "bench.errors"}
    for name, path in _modules().items():
        if name.startswith("leaderboard"):
            used = {i for i in _imports(path, top_level_only=False) if i.split(".")[0] == "bench"}
            # "from bench.results import X" also yields "bench.results.X"
            modules = {i for i in used if i in _modules() or i == "bench"}
            assert modules <= allowed, (name, sorted(modules - allowed))


def _cycles(top_level_only: bool) -> list[list[str]]:
    """Strongly connected groups of modules that import each other (directly or not)."""
    modules = _modules()
    graph = {
        name: sorted(
            i for i in _imports(path, top_level_only=top_level_only) if i in modules and i != name
        )
        for name, path in modules.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_no_import_circles() -> None:
    """Counting imports inside functions too (lazy imports are still dependencies)."""
    assert _cycles(top_level_only=False) == []


def test_the_cycle_finder_finds_a_circle(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    pkg = tmp_path / "bench"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from bench import b\n")
    (pkg / "b.py").write_text("def f():\n    import bench.a\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGES"]), "PACKAGES", ("bench",))
    assert _cycles(top_level_only=False) == [["bench.a", "bench.b"]]
    assert _cycles(top_level_only=True) == []
