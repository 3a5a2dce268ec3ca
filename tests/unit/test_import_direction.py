"""Imports point one way: processor -> timers -> state -> schemas (STYLE habit 2).

timers, state and schemas are installed as processor.timers, processor.state and processor.schemas
(symlinks under processor/), so an import of processor.state.x belongs to the state layer.

Checked on the source (every import statement, including those inside functions and TYPE_CHECKING
blocks), so the order in which modules happen to be imported cannot hide a reversed import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.kafka_support import REPO

PROJECT = {"processor", "timers", "state", "schemas", "tests"}
LOWER = {"timers", "state", "schemas"}


def _layer(name: str) -> str:
    """The project layer a dotted module name belongs to ('' when it is not the project's)."""
    top, _, rest = name.partition(".")
    if top == "processor" and rest.partition(".")[0] in LOWER:
        return rest.partition(".")[0]
    return top if top in PROJECT else ""
ALLOWED = {
    "schemas": {"schemas"},
    "state": {"state", "schemas"},
    "timers": {"timers", "state", "schemas"},
}


def _imported_packages(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, top-level project package) of every import in `path`."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            # a relative import stays inside the importing package
            names = [package] if node.level else [node.module or ""]
            if node.module == "processor":  # from processor import schemas
                names = [f"processor.{a.name}" for a in node.names]
        else:
            continue
        found += [(node.lineno, _layer(n)) for n in names if _layer(n)]
    return sorted(found)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_lower_layer_imports_nothing_above_it(package: str) -> None:
    files = sorted((REPO / package).rglob("*.py"))
    assert files, f"no modules under {package}/"
    bad = [f"{f.relative_to(REPO)}:{line} imports {top}"
           for f in files for line, top in _imported_packages(f, package) if top not in ALLOWED[package]]
    assert not bad, "imports pointing up the layers:\n" + "\n".join(bad)


def test_the_checker_sees_imports_hidden_in_functions_and_relative_imports(tmp_path: Path) -> None:
    mod = tmp_path / "m.py"
    mod.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import processor._app\n"
                   "def f():\n    from timers import Timer\n    from . import sibling\n"
                   "from processor import state, timers\nfrom processor.schemas import x\n")
    assert _imported_packages(mod, "state") == [(3, "processor"), (5, "timers"), (6, "state"), (7, "state"),
                                                (7, "timers"), (8, "schemas")]
