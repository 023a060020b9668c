"""`mosaic evaluate` itself: `run_evaluation` checks its arguments (`_checked_plan`), gets the units
(`collect.collect_units`: from the cache, or drawn through the service's sampler) and writes every
output: the rows (`rows.build_frames`), the tables (`write_tables`), the plots, the report and
``run.json`` (with the history of runs into that directory). Imports every module of the package; the
plots are imported lazily (the layout: docs/DESIGN.md § Layout).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from app.evaluation.collect import PROPOSALS, CollectedUnits, collect_units, default_mixture_share
from app.evaluation.instances import Instance, load_instances
from app.evaluation.report import write_report
from app.evaluation.rows import DEFAULT_TAU_MULTIPLIERS, build_frames
from app.evaluation.units import UnitData

logger = logging.getLogger(__name__)


@dataclass
class EvaluationSummary:
    out: Path
    units_total: int
    units_computed: int
    units_reused: int
    wall_seconds: float
    collect_seconds_total: float  # model time summed over all units (from the cache)
    files: list[Path] = field(default_factory=list)
    auctions: pd.DataFrame | None = None
    advertisers: pd.DataFrame | None = None


@dataclass(frozen=True)
class _Plan:
    """The checked arguments of one run, as run.json records them."""

    instances: Path
    instance_list: list[Instance]
    seeds: int
    m_values: list[int]
    proposals: list[str]
    taus: list[float] | None
    max_tokens: int
    temperature: float
    top_p: float
    engine: str  # "remote" (workers by URL) or the in-process model's name
    mixture_share: float


def run_evaluation(
    instances: Path,
    out: Path,
    seeds: int,
    candidates: list[int],
    proposals: list[str],
    taus: list[float] | None,
    limit: int | None,
    max_tokens: int,
    url: str | None,
    model: str,
    *,
    resume: bool = True,
    concurrency: int | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    show_progress: bool = True,
    write_plots: bool = True,
) -> EvaluationSummary:
    """Run (or resume) the evaluation and write rows, plots and the report into ``out``."""
    started = time.perf_counter()
    load_at_start = _load_average()
    plan = _checked_plan(
        instances, limit, seeds, candidates, proposals, taus, max_tokens, temperature, top_p, url, model
    )
    out.mkdir(parents=True, exist_ok=True)
    collected = collect_units(
        plan.instance_list,
        out,
        seeds=seeds,
        proposals=plan.proposals,
        num_candidates=plan.m_values[-1],
        max_tokens=max_tokens,
        url=url,
        model=model,
        resume=resume,
        concurrency=concurrency,
        temperature=temperature,
        top_p=top_p,
        show_progress=show_progress,
    )
    auctions, advertisers = build_frames(collected.units, plan.m_values, plan.taus)
    summary = _write_tables_and_plots(out, collected, auctions, advertisers, write_plots, started)
    run_path = out / "run.json"
    run_info = _run_info(plan, collected, summary)
    run_info["history"] = _history(run_path, summary, collected.computed, load_at_start)
    summary.files.append(write_report(out, auctions, advertisers, run_info))
    summary.files.append(_write_run_info(run_path, run_info, summary, started))
    logger.info("evaluation written", extra={"out": str(out), "units_computed": summary.units_computed})
    return summary


def _write_tables_and_plots(
    out: Path,
    collected: CollectedUnits,
    auctions: pd.DataFrame,
    advertisers: pd.DataFrame,
    write_plots: bool,
    started: float,
) -> EvaluationSummary:
    """The rows' tables and the plots; the summary so far (files, wall time)."""
    units, computed_units = collected.units, collected.computed

    from app.evaluation.plots import write_all_plots

    files = write_tables(out, auctions, advertisers)
    if write_plots:
        files += write_all_plots(out, auctions, advertisers)
    return EvaluationSummary(
        out=out,
        units_total=len(units),
        units_computed=len(computed_units),
        units_reused=len(units) - len(computed_units),
        wall_seconds=time.perf_counter() - started,
        collect_seconds_total=sum(data.collect_seconds for data, _ in units),
        files=files,
        auctions=auctions,
        advertisers=advertisers,
    )


def _run_info(plan: _Plan, collected: CollectedUnits, summary: EvaluationSummary) -> dict[str, Any]:
    """run.json's configuration and counts (the history is added after)."""
    return {
        "instances": str(plan.instances),
        "num_instances": len(plan.instance_list),
        "seeds": plan.seeds,
        "candidates": plan.m_values,
        "proposals": plan.proposals,
        "taus": plan.taus,
        "tau_multipliers": None if plan.taus is not None else list(DEFAULT_TAU_MULTIPLIERS),
        "max_tokens": plan.max_tokens,
        "temperature": plan.temperature,
        "top_p": plan.top_p,
        "engine": plan.engine,
        "model_names": sorted({str(data.model_name) for data, _ in collected.units}),
        "mixture_context_share": plan.mixture_share if "mixture" in plan.proposals else None,
        "units_total": summary.units_total,
        "units_computed": summary.units_computed,
        "units_reused": summary.units_reused,
        "collect_seconds_total": summary.collect_seconds_total,
        "wall_seconds_this_run": summary.wall_seconds,
    }


def _checked_plan(
    instances: Path,
    limit: int | None,
    seeds: int,
    candidates: list[int],
    proposals: list[str],
    taus: list[float] | None,
    max_tokens: int,
    temperature: float,
    top_p: float,
    url: str | None,
    model: str,
) -> _Plan:
    """The run's plan, its instances read; ValueError naming the first argument out of range (before
    anything is drawn or written)."""
    proposals = [p.strip() for p in proposals if p.strip()]
    unknown = sorted(set(proposals) - set(PROPOSALS))
    if unknown or not proposals:
        raise ValueError(f"proposals must be among {PROPOSALS}, got {proposals}")
    if seeds < 1:
        raise ValueError("seeds must be >= 1")
    m_values = sorted(set(candidates))
    if not m_values or m_values[0] < 1:
        raise ValueError(f"candidates (M) must be >= 1, got {candidates}")
    if taus is not None and (not taus or any(not (math.isfinite(t) and t > 0) for t in taus)):
        raise ValueError(f"tau values must be finite and > 0, got {taus}")
    if max_tokens < 1:
        raise ValueError("max_tokens must be >= 1")
    if "mixture" in proposals and (temperature != 1.0 or top_p != 1.0):
        raise ValueError("proposal 'mixture' requires temperature 1 and top_p 1")
    return _Plan(
        instances=instances,
        instance_list=load_instances(instances, limit),
        seeds=seeds,
        m_values=m_values,
        proposals=proposals,
        taus=taus,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        engine="remote" if url else model,
        mixture_share=default_mixture_share(),
    )


def _history(
    run_path: Path, summary: EvaluationSummary, computed_units: list[UnitData], load_at_start: float | None
) -> list[dict[str, Any]]:
    """The runs into this directory so far, this one last. Every run appends to the history, so a
    resumed re-render keeps the timing of the run that drew the candidates."""
    history = _previous_history(run_path)
    history.append(
        {
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "wall_seconds": round(summary.wall_seconds, 2),
            "units_computed": summary.units_computed,
            "units_reused": summary.units_reused,
            "collect_seconds": round(sum(data.collect_seconds for data in computed_units), 2),
            "load_average_1m_start": load_at_start,
            "load_average_1m_end": _load_average(),
            "cpu_count": os.cpu_count(),
        }
    )
    return history


def _write_run_info(
    run_path: Path, run_info: dict[str, Any], summary: EvaluationSummary, started: float
) -> Path:
    """run.json, its wall times (and this run's in the history) now including the report's."""
    summary.wall_seconds = time.perf_counter() - started
    run_info["wall_seconds_this_run"] = summary.wall_seconds
    run_info["history"][-1]["wall_seconds"] = round(summary.wall_seconds, 2)
    run_path.write_text(json.dumps(run_info, indent=2) + "\n", encoding="utf-8")
    return run_path


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _previous_history(run_path: Path) -> list[dict[str, Any]]:
    try:
        previous = json.loads(run_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    history = previous.get("history") if isinstance(previous, dict) else None
    return [entry for entry in history if isinstance(entry, dict)] if isinstance(history, list) else []


def write_tables(out: Path, auctions: pd.DataFrame, advertisers: pd.DataFrame) -> list[Path]:
    """rows.csv (one row per auction) and advertisers.csv (one per auction × advertiser); Parquet too
    when pyarrow is importable."""
    files = []
    for frame, stem in ((auctions, "rows"), (advertisers, "advertisers")):
        path = out / f"{stem}.csv"
        frame.to_csv(path, index=False, float_format="%.10g")
        files.append(path)
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            continue
        parquet = out / f"{stem}.parquet"
        frame.to_parquet(parquet, index=False)
        files.append(parquet)
    return files
