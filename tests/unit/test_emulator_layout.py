"""The emulators stay out of production code, and the providers import each other without cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import mailerd

PACKAGE = Path(mailerd.__file__).parent
# The commands that run an emulator: `mailerd sink` and `mailerd demo`.
EMULATOR_USERS = {"mailerd.cli", "mailerd.demo"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every ``mailerd`` module a file imports, at any depth (function-level imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.split(".")[0] == "mailerd"}


def test_no_production_module_imports_the_emulator() -> None:
    offenders = {
        module_name(path): sorted(name for name in imported(path) if name.startswith("mailerd.emulator"))
        for path in PACKAGE.rglob("*.py")
        if not module_name(path).startswith("mailerd.emulator") and module_name(path) not in EMULATOR_USERS
    }
    assert {module: names for module, names in offenders.items() if names} == {}


def test_providers_import_each_other_without_cycles() -> None:
    paths = sorted((PACKAGE / "providers").glob("*.py"))
    modules = {module_name(path) for path in paths}
    graph = {module_name(path): imported(path) & modules - {module_name(path)} for path in paths}
    for name in graph:
        graph[name].discard("mailerd.providers")  # the package itself: importing a submodule runs it
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        assert name not in visiting, f"import cycle: {' -> '.join([*visiting, name])}"
        if name in done:
            return
        visiting.append(name)
        for target in sorted(graph[name]):
            visit(target)
        visiting.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
