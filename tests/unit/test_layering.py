"""The house rules of DESIGN.md, checked on the import graph so a violation fails the build, not a review."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def violations(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for module in imported_modules(path):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(ROOT)} imports {module}")
    return found


def test_adapters_import_only_the_vocabulary_and_the_standard_library():
    forbidden = ("flask", "werkzeug", "gunicorn", "llama_cpp", "numpy", "requests", "gateway.engine",
                 "gateway.service", "gateway.routes", "gateway.app", "gateway.models", "gateway.config")
    assert violations("adapters", forbidden) == []


def test_engine_knows_no_http_and_no_api_family():
    forbidden = ("flask", "werkzeug", "gunicorn", "adapters", "gateway.routes", "gateway.service", "gateway.app")
    assert violations("gateway/engine", forbidden) == []


@pytest.mark.parametrize("folder", ["adapters", "gateway/engine"])
def test_the_checked_folders_exist_and_have_modules(folder):
    assert list((ROOT / folder).glob("*.py")), folder


def test_exactly_one_streaming_loop_yields_frames():
    """Adapters return frames; only routes.py iterates events and yields them to the client."""
    yielding = []
    for path in sorted(ROOT.rglob("*.py")):
        if ".venv" in path.parts or "tests" in path.parts or "bench" in path.parts:
            continue
        tree = ast.parse(path.read_text(), str(path))
        if any(isinstance(node, (ast.Yield, ast.YieldFrom)) for node in ast.walk(tree)):
            yielding.append(path.relative_to(ROOT).as_posix())
    assert sorted(yielding) == ["gateway/routes.py", "gateway/service.py"]
