"""The module map of DESIGN.md: imports flow one way, with no cycle, not even a lazy one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "oneseek_job"
# The bottom layer every module may use.
BASE = {"config", "errors", "logs", "digests"}
# Module → the only modules of ours it may import (anywhere in the file, lazily or not).
ALLOWED = {
    "layout": set(),
    "digests": set(),
    "documents": set(),
    "checksums": set(),
    "storage": BASE | {"faultpoints", "checksums"},
    "faultpoints": set(),
    "oms": BASE,
    "safefile": {"errors"},
    "provenance": BASE | {"layout", "documents", "safefile"},
    "rundocs": BASE | {"layout", "documents", "provenance", "discovery"},
    "verify": BASE | {"layout", "documents", "provenance", "storage", "oms"},
    "certify": BASE
    | {"layout", "documents", "provenance", "storage", "rundocs", "oms", "faultpoints"},
    "carry": BASE | {"layout", "documents", "provenance", "storage", "certify", "verify"},
}


def _imports(module: str) -> set[str]:
    """Every ``oneseek_job`` module imported anywhere in ``module`` (TYPE_CHECKING included)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "oneseek_job":
                found |= {alias.name for alias in node.names if alias.name != "__version__"}
            elif node.module.startswith("oneseek_job."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("oneseek_job.")}
    return found - {module}


def _graph() -> dict[str, set[str]]:
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    modules |= {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    return {m: _imports(m) & modules for m in modules if (PACKAGE / f"{m}.py").is_file()}


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_low_level_modules_import_only_lower_layers(module: str) -> None:
    extra = _imports(module) - ALLOWED[module]
    assert not extra, f"{module} imports {sorted(extra)}"


def test_no_import_cycle() -> None:
    graph = _graph()
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> None:
        if node in done:
            return
        assert node not in visiting, f"import cycle: {' -> '.join([*visiting, node])}"
        visiting.append(node)
        for target in sorted(graph.get(node, ())):
            visit(target)
        visiting.pop()
        done.add(node)

    for module in sorted(graph):
        visit(module)


def test_the_orchestrator_is_job_not_run() -> None:
    assert (PACKAGE / "job.py").is_file()
    assert not (PACKAGE / "run.py").exists()
    assert not (PACKAGE / "artifacts.py").exists()
