"""The layout's rules (DESIGN.md § Layout), read from the source: what each package may import,
module size, and a docstring on every module. Static (AST): nothing is imported to check it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 400


def _modules(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _offending(path: Path, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(n for n in _imports(path) if any(n == f or n.startswith(f + ".") for f in forbidden))


def test_the_mechanism_and_prompts_are_pure() -> None:
    forbidden = ("fastapi", "starlette", "httpx", "redis", "pydantic", "torch", "workers", "app")
    for name in ("mechanism.py", "prompts.py"):
        path = ROOT / "app" / name
        assert _offending(path, forbidden) == [], path


def test_the_compared_mechanisms_are_pure() -> None:
    """`mosaic compare`'s mechanisms and misreport search: numpy/scipy and the service's mechanism only."""
    forbidden = ("fastapi", "starlette", "httpx", "redis", "pydantic", "torch", "workers", "app.auction")
    forbidden += ("app.gateway", "app.ledger", "app.evaluation", "pandas", "matplotlib")
    for name in ("mechanisms.py", "incentives.py"):
        path = ROOT / "app" / "comparison" / name
        assert _offending(path, forbidden) == [], path


@pytest.mark.parametrize("path", _modules("workers"), ids=lambda p: str(p.relative_to(ROOT)))
def test_workers_never_import_app(path: Path) -> None:
    assert _offending(path, ("app",)) == []


@pytest.mark.parametrize("path", _modules("app/ledger"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_ledger_is_independent_of_the_auction(path: Path) -> None:
    forbidden = ("app.auction", "app.evaluation", "app.gateway.app", "app.gateway.routes")
    assert _offending(path, forbidden) == []


@pytest.mark.parametrize("path", _modules("app/auction"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_auction_never_imports_the_gateway_app(path: Path) -> None:
    # The CLI drives the whole app in process (it is `mosaic auction`), nothing else may.
    if path.name != "cli.py":
        assert _offending(path, ("app.gateway.app", "app.gateway.routes", "app.evaluation")) == []


@pytest.mark.parametrize(
    "path", _modules("app", "workers", "bench", "mosaic_client"), ids=lambda p: str(p.relative_to(ROOT))
)
def test_modules_are_small_and_say_their_job(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_LINES, f"{path}: over {MAX_LINES} lines"
    if path.name != "__main__.py":
        assert ast.get_docstring(ast.parse(text)), f"{path}: no module docstring"


@pytest.mark.parametrize("path", _modules("mosaic_client"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_client_uses_only_the_api_models(path: Path) -> None:
    forbidden = ("app.gateway.app", "app.gateway.routes", "app.auction.service", "app.ledger", "redis")
    assert _offending(path, (*forbidden, "torch", "workers.server", "app.evaluation")) == []


def test_the_whatif_has_no_io() -> None:
    path = ROOT / "app" / "auction" / "whatif.py"
    assert _offending(path, ("redis", "httpx", "fastapi", "starlette", "torch", "app.ledger")) == []


def test_lua_scripts_are_files() -> None:
    assert sorted(p.name for p in (ROOT / "app" / "ledger").glob("*.lua")) == [
        "apply.lua",
        "dead_letter.lua",
        "idempotency_bill.lua",
        "idempotency_release.lua",
        "idempotency_store.lua",
        "render.lua",
        "trim.lua",
    ]
    for path in _modules("app"):
        assert "redis.call(" not in path.read_text(encoding="utf-8"), f"{path}: Lua inside Python"
