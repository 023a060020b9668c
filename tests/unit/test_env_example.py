""".env.example lists every setting with its default: it equals deploy/settings_table.py's output, and
uncommenting its lines changes nothing (the defaults it writes are Settings' own)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / ".env.example"


def _generator() -> object:
    spec = importlib.util.spec_from_file_location("settings_table", ROOT / "deploy" / "settings_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_env_example_is_generated() -> None:
    expected = _generator().env_example()  # type: ignore[attr-defined]
    assert EXAMPLE.read_text() == expected, (
        "stale .env.example: run `make env-example` (deploy/settings_table.py --env-example .env.example)"
    )


def test_every_setting_is_listed_once() -> None:
    assigned = [
        line[2:].split("=", 1)[0]
        for line in EXAMPLE.read_text().splitlines()
        if line.startswith("# ") and "=" in line and line[2:].split("=", 1)[0].isupper()
    ]
    assert sorted(assigned) == sorted(name.upper() for name in Settings.model_fields)


def test_uncommented_defaults_are_the_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)  # no project .env
    lines = []
    for line in EXAMPLE.read_text().splitlines():
        key, _, value = line[2:].partition("=")
        if line.startswith("# ") and key.isupper() and "=" in line and value:
            lines.append(f"{key}={value}")
    env_file = tmp_path / "example.env"
    env_file.write_text("\n".join(lines) + "\n")
    assert len(lines) > 30
    assert Settings(_env_file=env_file).model_dump() == Settings(_env_file=None).model_dump()
