"""The package's layout: imports run one way, and ``import autoprune`` stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "autoprune"
# Lower layers never import higher ones (DESIGN: engine <- tasks <- search <- run <-
# backends <- workflow, reports <- cli); leaf helpers are importable from everywhere.
LAYERS = {
    "progress": 0,
    "errors": 0,
    "sections": 0,
    "engine": 1,
    "tasks": 2,
    "search": 3,
    "run": 4,
    "strategies": 5,
    "backends": 6,
    "workflow": 7,
    "reports": 7,
    "cli": 8,
    "__main__": 9,
}


def _layer_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def _imported_layers(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "autoprune" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_imports_run_one_way() -> None:
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        if path.parent == PACKAGE and path.name == "__init__.py":
            continue  # the package's front door re-exports the engine
        layer = _layer_of(path)
        for imported in _imported_layers(path) - {layer}:
            if LAYERS[imported] >= LAYERS[layer]:
                wrong.append(f"{path.relative_to(REPO)} ({layer}) imports autoprune.{imported}")
    assert not wrong, "\n".join(wrong)


def test_import_autoprune_loads_the_engine_only() -> None:
    code = (
        "import sys, autoprune; "
        "heavy = [m for m in ('optuna', 'pandas', 'pydantic', 'ray', 'matplotlib') "
        "if m in sys.modules]; print(heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
