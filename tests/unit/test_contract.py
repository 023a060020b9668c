"""The API's models load without the web framework: `mosaic_client`, every `app.contract` module and the
pure what-if import no FastAPI or Starlette (checked in a fresh interpreter, where nothing is loaded yet)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

MODULES = (
    "mosaic_client",
    "app.contract",
    "app.contract.errors",
    "app.contract.limits",
    "app.contract.request",
    "app.contract.result",
    "app.contract.whatif",
    "app.auction.whatif",
)


def test_the_client_and_the_contract_load_no_web_framework() -> None:
    code = (
        f"import importlib, sys\nfor name in {MODULES!r}:\n    importlib.import_module(name)\n"
        "loaded = sorted(m for m in ('fastapi', 'starlette') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    command = [sys.executable, "-c", code]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
