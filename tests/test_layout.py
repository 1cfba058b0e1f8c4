"""The layout's promises, checked on the source text: short files and functions, a small top level,
no import cycles, and the fusion of the two branches in one module."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "imsm"
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 80
MAX_TOP_LEVEL_MODULES = 15


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), filename=str(path)) for name, path in SOURCES.items()}


def test_the_package_is_found():
    assert {"imsm.model.siamese", "imsm.model.gate"} <= SOURCES.keys()


def test_no_file_is_longer_than_the_limit():
    long = {name: n for name, path in SOURCES.items() if (n := len(path.read_text().splitlines())) > MAX_FILE_LINES}
    assert long == {}


def test_no_function_is_longer_than_the_limit():
    long = {
        f"{name}:{node.lineno} {node.name}": node.end_lineno - node.lineno + 1
        for name, tree in TREES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    }
    assert long == {}


def test_the_top_level_is_small():
    entry_points = {"__init__.py", "__main__.py", "version.py"}
    top = sorted(path.name for path in PACKAGE.glob("*.py") if path.name not in entry_points)
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def imported_modules(name: str, tree: ast.Module) -> set[str]:
    """The project's modules that `name` imports when it is first imported (its top-level statements)."""
    package = name.split(".") if SOURCES[name].name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in tree.body:  # imports inside functions or `if TYPE_CHECKING:` run later, or never
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            submodules = {f"{module}.{alias.name}" for alias in node.names} & SOURCES.keys()
            found |= submodules or {module}  # `from package import submodule` imports the submodule
    return {module for module in found if module in SOURCES and module != name}


def test_no_import_cycles():
    graph = {name: imported_modules(name, tree) for name, tree in TREES.items()}
    cycles, done = [], set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            cycles.append(path[path.index(node) :] + [node])
            return
        if node in done:
            return
        for child in sorted(graph[node]):
            visit(child, path + [node])
        done.add(node)

    for name in sorted(graph):
        visit(name, [])
    assert cycles == []


def test_the_fusion_lives_in_one_module():
    """Equations 4-5 (the gate's sigmoid and the interpolation of the two branches) are written once."""
    defined = {
        node.name: name
        for name, tree in TREES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name in {"FusionGate", "fuse", "interpolate"}
    }
    sigmoid = [name for name, path in SOURCES.items() if "sigmoid(" in path.read_text()]
    assert defined == dict.fromkeys(["FusionGate", "interpolate", "fuse"], "imsm.model.gate")
    assert sigmoid == ["imsm.model.gate"]
