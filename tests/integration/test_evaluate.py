"""`mosaic evaluate` end to end with the tiny-random model: every file and plot, and resuming.

In process (the worker app through httpx's ASGI transport, as `mosaic serve` embeds it) and once
against a real worker process by URL. Small: 1 instance, 1 seed, M ∈ {1, 2, 4}, 8 tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

import app.evaluation.collect as evaluation_collect
from app.cli import cli
from app.evaluation.rows import ADVERTISER_COLUMNS, AUCTION_COLUMNS, DEFAULT_TAU_MULTIPLIERS
from app.evaluation.run import run_evaluation
from tests.fixtures_worker import WorkerProcess

PLOTS = [
    "fig1a_log_target_vs_m",
    "fig1b_reward_gain_vs_m",
    "fig2_revenue_vs_m",
    "fig3_log_ref_vs_m",
    "fig4_utility_gain_vs_m",
    "fig5_6_utility_vs_reward_scatter",
    "fig7_correlation_vs_m",
    "fig12_fraction_named_vs_m",
    "tau_sweep",
    "ess_vs_m",
]
M_VALUES = [1, 2, 4]
PROPOSALS = ["context", "reference", "mixture"]

INSTANCE = {
    "id": 7,
    "query": "Learning to play the guitar.",
    "advertisers": [
        {"id": "strummaster", "name": "StrumMaster", "description": "selling guitars and tuners"},
        {"id": "chordify", "name": "Chordify", "description": "offering online guitar lessons"},
    ],
}


@pytest.fixture()
def instances_file(tmp_path: Path) -> Path:
    path = tmp_path / "instances.jsonl"
    path.write_text(json.dumps(INSTANCE) + "\n", encoding="utf-8")
    return path


def _refuse_engine(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("a resumed run must not open the engine")


def test_evaluate_in_process_writes_every_file_and_resumes(
    instances_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    summary = run_evaluation(
        instances=instances_file,
        out=out,
        seeds=1,
        candidates=M_VALUES,
        proposals=PROPOSALS,
        taus=None,
        limit=None,
        max_tokens=8,
        url=None,
        model="tiny-random",
        show_progress=False,
    )
    assert (summary.units_total, summary.units_computed, summary.units_reused) == (3, 3, 0)

    expected_files = ["rows.csv", "advertisers.csv", "report.md", "run.json"]
    expected_files += [f"{stem}.{ext}" for stem in PLOTS for ext in ("png", "svg")]
    for name in expected_files:
        path = out / name
        assert path.is_file() and path.stat().st_size > 0, name
    assert (out / "fig1a_log_target_vs_m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (out / "tau_sweep.svg").read_bytes()[:2000]
    cache_files = sorted((out / "cache").rglob("*.json"))
    assert len(cache_files) == 3

    rows = pd.read_csv(out / "rows.csv")
    advertisers = pd.read_csv(out / "advertisers.csv")
    assert list(rows.columns) == AUCTION_COLUMNS
    assert list(advertisers.columns) == ADVERTISER_COLUMNS
    expected_rows = 1 * 1 * len(PROPOSALS) * len(M_VALUES) * len(DEFAULT_TAU_MULTIPLIERS)
    assert len(rows) == expected_rows
    assert len(advertisers) == 2 * expected_rows
    assert set(rows["proposal"]) == set(PROPOSALS)
    assert sorted(rows["M"].unique()) == M_VALUES
    assert rows["primary_tau"].sum() == len(PROPOSALS) * len(M_VALUES)
    # M = 1: one candidate, nobody gains or pays; ESS lies in [1, M] everywhere.
    single = rows[rows["M"] == 1]
    assert single["revenue"].abs().max() < 1e-9
    assert single["total_reward_gain"].abs().max() < 1e-9
    assert ((rows["ess"] >= 1 - 1e-9) & (rows["ess"] <= rows["M"] + 1e-9)).all()
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## The paper's claims beside our numbers" in report
    assert "fig1a_log_target_vs_m.png" in report
    run_info = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert run_info["units_computed"] == 3

    # Rerun through the CLI: everything comes from the cache, the engine is never opened, and the
    # rows are identical (deterministic by seed).
    first_rows = (out / "rows.csv").read_bytes()
    cache_mtimes = [path.stat().st_mtime_ns for path in cache_files]
    monkeypatch.setattr(evaluation_collect, "_open_engine", _refuse_engine)
    result = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--instances",
            str(instances_file),
            "--out",
            str(out),
            "--seeds",
            "1",
            "--candidates",
            ",".join(str(m) for m in M_VALUES),
            "--proposals",
            ",".join(PROPOSALS),
            "--max-tokens",
            "8",
            "--model",
            "tiny-random",
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (out / "rows.csv").read_bytes() == first_rows
    assert [path.stat().st_mtime_ns for path in cache_files] == cache_mtimes
    rerun_info = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert (rerun_info["units_computed"], rerun_info["units_reused"]) == (0, 3)


def test_evaluate_against_a_worker_url(
    instances_file: Path, tmp_path: Path, tiny_worker: WorkerProcess
) -> None:
    out = tmp_path / "remote"
    summary = run_evaluation(
        instances=instances_file,
        out=out,
        seeds=1,
        candidates=[1, 2],
        proposals=["context"],
        taus=[1.0],
        limit=1,
        max_tokens=4,
        url=tiny_worker.url,
        model="ignored-with-url",
        show_progress=False,
        write_plots=False,
    )
    assert summary.units_computed == 1
    rows = pd.read_csv(out / "rows.csv")
    assert len(rows) == 2 and set(rows["tau"]) == {1.0}
    run_info = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert run_info["engine"] == "remote" and run_info["model_names"] == ["tiny-random"]
