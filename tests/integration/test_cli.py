"""`mosaic auction` in process (tiny-random worker, embedded Redis in a temp dir): reply and table."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.cli_auction import parse_advertiser


def test_auction_command_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.delenv("WORKER_URLS", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    result = CliRunner().invoke(
        cli,
        [
            "auction",
            "Learning to play the guitar.",
            "-a",
            "strummaster:StrumMaster:selling guitars",
            "-a",
            "chordify:Chordify:online guitar lessons: live and recorded",
            "--model",
            "tiny-random",
            "-m",
            "3",
            "--max-tokens",
            "8",
            "--seed",
            "4",
            "--show-candidates",
        ],
    )
    assert result.exit_code == 0, result.output
    for text in ("reply (candidate", "strummaster", "chordify", "revenue", "candidates"):
        assert text in result.output
    # the disclosure label above the reply: with tiny-random both differ across candidates, both pay
    assert "Sponsored · Chordify, StrumMaster\n" in result.output, result.output
    assert result.output.index("Sponsored · ") < result.output.index("reply (candidate")


def test_bad_advertiser_spec_exits_2() -> None:
    result = CliRunner().invoke(cli, ["auction", "q", "-a", "only-an-id"])
    assert result.exit_code == 2
    assert "id:Name:description" in result.output


def test_parse_advertiser_keeps_colons_in_the_description() -> None:
    assert parse_advertiser("x y:Name:a: b") == {"id": "x-y", "name": "Name", "description": "a: b"}
