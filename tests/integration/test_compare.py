"""`mosaic compare` end to end with the tiny-random model (the CLI, in process): every file, one row per
(instance, seed, proposal, M, mechanism), the same candidates for every mechanism, no incentive gap for
MOSAIC, and a rerun that draws nothing (the evaluation cache is shared). Small: 1 instance, 1 seed,
M ∈ {1, 2, 4}, 8 tokens, a short misreport search."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

import app.evaluation.collect as evaluation_collect
from app.cli import cli
from app.comparison.mechanisms import MECHANISMS

INSTANCE = {
    "id": 7,
    "query": "Learning to play the guitar.",
    "advertisers": [
        {"id": "strummaster", "name": "StrumMaster", "description": "selling guitars and tuners"},
        {"id": "chordify", "name": "Chordify", "description": "offering online guitar lessons"},
    ],
}
FIGURES = ["frontier", "incentive_gap_vs_m", "revenue_vs_m", "reward_gain_vs_m"]


def _refuse_engine(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("a rerun on a full cache must not open the engine")


def test_compare_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    instances = tmp_path / "instances.jsonl"
    instances.write_text(json.dumps(INSTANCE) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    args = [
        "compare",
        "--instances",
        str(instances),
        "--out",
        str(out),
        "--seeds",
        "1",
        "--candidates",
        "1,2,4",
    ]
    args += ["--max-tokens", "8", "--model", "tiny-random", "--optimise-evaluations", "30"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output

    for name in ["compare.csv", "compare.md", "compare.json"] + [
        f"{f}.{e}" for f in FIGURES for e in ("png", "svg")
    ]:
        assert (out / name).stat().st_size > 0, name
    frame = pd.read_csv(out / "compare.csv")
    assert len(frame) == 2 * 3 * len(MECHANISMS)  # proposals × M × mechanisms
    assert set(frame["mechanism"]) == set(MECHANISMS)
    no_ads = frame[frame["mechanism"] == "no_ads"]
    assert (no_ads["revenue"] == 0).all() and (no_ads["user_gap"].abs() < 1e-12).all()
    mosaic = frame[frame["mechanism"].str.startswith("mosaic")]
    assert (mosaic["incentive_gap"] <= 1e-9 * (1 + frame["welfare"].abs().max())).all()
    deterministic = frame[frame["mechanism"].isin(["vcg_best_of_m", "first_price_best_of_m"])]
    assert (deterministic["ess"] == 1.0).all()
    # Same candidates: at M = 1 every mechanism returns the one candidate, so the user's utility agrees.
    at_one = frame[frame["M"] == 1].groupby("proposal")["user_log_ref"].nunique()
    assert (at_one == 1).all()
    report = (out / "compare.md").read_text(encoding="utf-8")
    assert "Who wins on what" in report and "best-of-M + VCG" in report

    monkeypatch.setattr(evaluation_collect, "_open_engine", _refuse_engine)
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    rerun = pd.read_csv(out / "compare.csv")
    assert rerun.drop(columns="compute_us").equals(frame.drop(columns="compute_us"))  # timings differ
