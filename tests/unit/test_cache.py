"""The machine-wide cache (workers/cache.py): content-hash keys (one copy per machine) and
`mosaic cache clean` removing exactly the cache's entries."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli
from workers import cache


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MOSAIC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_same_content_same_key_whatever_the_path_or_mtime(root: Path, tmp_path: Path) -> None:
    first = tmp_path / "venv1" / "model.gguf"
    second = tmp_path / "venv2" / "model.gguf"
    for path in (first, second):
        path.parent.mkdir()
        path.write_bytes(b"weights" * 1000)
    os.utime(second, (1_000_000, 1_000_000))
    assert cache.content_hash(first) == cache.content_hash(second)
    second.write_bytes(b"other")
    assert cache.content_hash(first) != cache.content_hash(second)


def test_hash_is_memoised_by_path_size_mtime(root: Path, tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"abc")
    value = cache.content_hash(path)
    memo = root / ".content-hashes.json"
    assert value in memo.read_text()
    memo.write_text(memo.read_text().replace(value, "memoised"))
    assert cache.content_hash(path) == "memoised"  # not read again


def test_clean_removes_entries_only(root: Path) -> None:
    (root / "smollm2-v1-1-abc").mkdir(parents=True)
    (root / "smollm2-v1-1-abc" / "model.safetensors").write_bytes(b"x" * 100)
    (root / "vllm-0.33.0" / "bin").mkdir(parents=True)
    (root / "minilm-0872f5d7").mkdir(parents=True)  # the selection embedder's (issue 34)
    (root / ".minilm-0872f5d7-tmp").mkdir(parents=True)  # an interrupted extraction
    (root / ".smollm2-v1-1-abc.lock").write_text("")
    (root / "unrelated.txt").write_text("keep me")
    assert {p.name for p, _ in cache.entries()} == {
        "smollm2-v1-1-abc",
        "vllm-0.33.0",
        "minilm-0872f5d7",
        ".minilm-0872f5d7-tmp",
        ".smollm2-v1-1-abc.lock",
    }
    result = CliRunner().invoke(cli, ["cache", "clean"])
    assert result.exit_code == 0, result.output
    assert "removed" in result.output
    assert sorted(p.name for p in root.iterdir()) == ["unrelated.txt"]
    listing = CliRunner().invoke(cli, ["cache", "list"])
    assert listing.exit_code == 0 and "total" in listing.output
