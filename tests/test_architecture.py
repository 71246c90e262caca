"""The package map in the README is the architecture: every import follows it and no import runs in a circle.

The map's table names each package (or group of modules) of `candor` and `candor_local` and what it may
import. Imports are read from the source with `ast`, including those inside functions and under
TYPE_CHECKING, since a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_ROOTS = {"candor": ROOT / "layers/shared/python/candor", "candor_local": ROOT / "infra/candor_local"}
SERVICES = ROOT / "services"


def _modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of candor and candor_local."""
    modules = {}
    for _package, folder in PACKAGE_ROOTS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder.parent).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = _modules()


def _imported_names(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.relative_to(ROOT)}: relative import (use the full module name)"
            if node.module:
                yield node.module
                # `from candor.core import settings` imports the module candor.core.settings
                yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _imports(path: Path) -> set[str]:
    """The candor and candor_local modules a file imports: each name resolved to the module that holds it."""
    found = set()
    for name in _imported_names(path):
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name:
            found.add(name)
    return found


GRAPH = {module: _imports(path) - {module} for module, path in MODULES.items()}


def _map_rows() -> list[tuple[list[str], list[str]]]:
    """(the paths a row names, the paths it may import) for each row of the README's package map."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Package map", 1)[1].split("\n#", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            rows.append((re.findall(r"`([^`]+)`", cells[0]), re.findall(r"`([^`]+)`", cells[2])))
    assert rows, "the README's package map has no rows"
    return rows


def _covers(path: str, module: str) -> bool:
    """Whether a map path (`candor/index/`, `candor/ports.py`, `candor/`) names a module."""
    dotted = path.removesuffix(".py").strip("/").replace("/", ".")
    return module == dotted if path.endswith(".py") else module == dotted or module.startswith(dotted + ".")


ROWS = _map_rows()


def _row_of(module: str) -> int:
    rows = [index for index, (paths, _) in enumerate(ROWS) if any(_covers(path, module) for path in paths)]
    assert len(rows) == 1, f"{module} is named by {len(rows)} rows of the README's package map, not 1"
    return rows[0]


def _is_package_root(module: str) -> bool:
    return module in PACKAGE_ROOTS


def test_every_module_is_in_exactly_one_row_of_the_package_map() -> None:
    for module in MODULES:
        if not _is_package_root(module):
            _row_of(module)


def test_every_path_in_the_package_map_exists() -> None:
    for paths, allowed in ROWS:
        for path in paths + allowed:
            package, _, rest = path.partition("/")
            assert package in PACKAGE_ROOTS, f"package map: {path} is in neither candor nor candor_local"
            target = PACKAGE_ROOTS[package] / rest
            assert target.is_file() if path.endswith(".py") else target.is_dir(), f"package map: no {path}"


def test_every_top_level_package_and_module_is_in_the_package_map() -> None:
    named = {path for paths, _ in ROWS for path in paths}
    for package, folder in PACKAGE_ROOTS.items():
        for child in sorted(folder.iterdir()):
            if child.name == "__init__.py" or child.name.startswith((".", "__pycache__")):
                continue
            if child.suffix == ".py" or (child / "__init__.py").is_file():
                entry = f"{package}/{child.name}" + ("" if child.suffix == ".py" else "/")
                assert entry in named, f"{entry} is on disk but not in the README's package map"


def test_each_import_is_one_the_package_map_allows() -> None:
    wrong = []
    for module, imported in sorted(GRAPH.items()):
        if _is_package_root(module):
            assert not imported, f"{module}/__init__.py imports {sorted(imported)}; it should stay empty"
            continue
        _paths, allowed = ROWS[_row_of(module)]
        for target in sorted(imported):
            if _row_of(target) != _row_of(module) and not any(_covers(path, target) for path in allowed):
                wrong.append(f"{module} imports {target} (its row allows {', '.join(allowed) or 'nothing else'})")
    assert not wrong, "imports the README's package map does not allow:\n" + "\n".join(wrong)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle in the graph, or None (depth-first search, three colours)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*stack[stack.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_module_imports_itself_through_others() -> None:
    cycle = _cycle(GRAPH)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_rows_of_the_package_map_import_only_downward() -> None:
    rows: dict[str, set[str]] = {}
    for module, imported in GRAPH.items():
        if not _is_package_root(module):
            source = " ".join(ROWS[_row_of(module)][0])
            rows.setdefault(source, set()).update(" ".join(ROWS[_row_of(target)][0]) for target in imported)
    cycle = _cycle({row: targets - {row} for row, targets in rows.items()})
    assert cycle is None, "circle between rows of the package map: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_circle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("service", sorted(path.name for path in SERVICES.iterdir() if path.is_dir()))
def test_a_function_imports_candor_and_never_the_local_emulator(service: str) -> None:
    for path in sorted((SERVICES / service).glob("*.py")):
        local = sorted(name for name in _imports(path) if name.startswith("candor_local"))
        assert not local, f"{path.relative_to(ROOT)} imports {local}: Lambda has no candor_local"
