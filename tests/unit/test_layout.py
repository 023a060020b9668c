"""The layout's size rules (DESIGN.md § Layout), read from the source: module and function size, a
docstring on every module, Lua in files. What may import what is import-linter's job
(`[tool.importlinter]` in pyproject.toml, run by `make lint`). Static (AST): nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize(
    "path", _modules("app", "workers", "bench", "mosaic_client"), ids=lambda p: str(p.relative_to(ROOT))
)
def test_modules_are_small_and_say_their_job(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_LINES, f"{path}: over {MAX_LINES} lines"
    if path.name != "__main__.py":
        assert ast.get_docstring(ast.parse(text)), f"{path}: no module docstring"


@pytest.mark.parametrize(
    "path", _modules("app", "workers", "mosaic_client"), ids=lambda p: str(p.relative_to(ROOT))
)
def test_module_docstrings_point_to_the_design(path: Path) -> None:
    """A docstring says the job in a line or two; invariants and figures: DESIGN.md (or MECHANISM.md)."""
    if path.name != "__main__.py":
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        assert "DESIGN.md" in docstring or "MECHANISM.md" in docstring, path


def _long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    functions = (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))
    return [
        f"{path.relative_to(ROOT)}:{f.lineno} {f.name} ({lines} lines)"
        for f in functions
        if (lines := (f.end_lineno or f.lineno) - f.lineno + 1) > MAX_FUNCTION_LINES
    ]


@pytest.mark.parametrize("path", _modules("app", "workers"), ids=lambda p: str(p.relative_to(ROOT)))
def test_functions_are_short(path: Path) -> None:
    """No function past ~60 lines, its nested functions included (ruff's PLR0915 bounds the statements)."""
    assert _long_functions(path) == []


def test_lua_scripts_are_files() -> None:
    assert sorted(p.name for p in (ROOT / "app" / "ledger").glob("*.lua")) == [
        "apply.lua",
        "budget.lua",
        "dead_letter.lua",
        "frequency.lua",
        "idempotency_bill.lua",
        "idempotency_release.lua",
        "idempotency_store.lua",
        "log_append.lua",
        "render.lua",
        "trim.lua",
    ]
    for path in _modules("app"):
        assert "redis.call(" not in path.read_text(encoding="utf-8"), f"{path}: Lua inside Python"
