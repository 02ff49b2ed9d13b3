"""The repository's shape: component folders at the top, one import name for all of them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COMPONENTS = ("enforcer", "collector", "dashboard", "proto", "datasets", "replay", "detectors")
OLD_NAMES = {*COMPONENTS, "demo", "callward_cli"}


def _python_files() -> list[Path]:
    roots = [REPO / c for c in (*COMPONENTS, "demo")] + [
        REPO / "callward",
        REPO / "tests",
        REPO / "benchmarks",
    ]
    files: list[Path] = []
    for root in roots:
        for path in root.rglob("*.py"):
            if path.is_symlink() or "_pb2" in path.name:
                continue
            if root.name == "callward" and path.resolve().parent != (REPO / "callward"):
                continue  # reached through a component link; checked under its own folder
            files.append(path)
    return files


@pytest.mark.parametrize("component", [*COMPONENTS, "demo"])
def test_each_component_folder_is_linked_into_the_package(component: str) -> None:
    link = REPO / "callward" / component
    assert link.is_symlink(), f"callward/{component} must link to the top-level folder"
    assert link.resolve() == (REPO / component).resolve()
    assert (REPO / component / "__init__.py").is_file()


def test_no_module_imports_an_old_top_level_name() -> None:
    offenders: list[str] = []
    for path in _python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                if name.split(".", 1)[0] in OLD_NAMES:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {name}")
    assert not offenders, "\n".join(offenders)


def test_the_files_checked_are_the_whole_tree() -> None:
    files = {p.resolve() for p in _python_files()}
    assert (REPO / "enforcer" / "engine.py").resolve() in files
    assert (REPO / "callward" / "cli.py").resolve() in files
    assert (REPO / "tests" / "conftest.py").resolve() in files
