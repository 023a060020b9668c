"""The import-linter contracts (pyproject.toml `[tool.importlinter]`) catch what they name: each case
copies the packages, adds one forbidden import, and `lint-imports` must fail on that contract alone.
`make lint` runs the contracts on the real tree; this shows they are not vacuous."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

# (module that gets the import, the import added, the contract that must break)
VIOLATIONS = [
    ("app/auction/service.py", "import app.gateway.app", "app: the web layer on top"),
    ("app/ledger/producer.py", "import fastapi", "the domain knows no web framework"),
    ("workers/protocol.py", "import app.mechanism", "workers never import app"),
    (
        "app/mechanism.py",
        "import pydantic",
        "the mechanism, the prompts and compared mechanisms are pure",
    ),
    ("mosaic_client/client.py", "import app.ledger.producer", "the client uses only the API's models"),
    ("workers/engine/kv_pool.py", "import workers.engine.core", "workers.engine parts point one way"),
]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    for package in ("app", "workers", "mosaic_client"):
        shutil.copytree(
            ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__", "static")
        )
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root)},
        text=True,
        capture_output=True,
        timeout=300,
    )


def test_the_real_tree_keeps_every_contract(tree: Path) -> None:
    result = _lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("module", "statement", "contract"), VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
def test_a_forbidden_import_breaks_its_contract(
    tree: Path, module: str, statement: str, contract: str
) -> None:
    path = tree / module
    original = path.read_text(encoding="utf-8")
    path.write_text(f"{original}\n{statement}  # noqa\n", encoding="utf-8")
    try:
        result = _lint(tree)
    finally:
        path.write_text(original, encoding="utf-8")
    assert result.returncode == 1, result.stdout
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(contract in line for line in broken), result.stdout
