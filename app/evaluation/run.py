"""`mosaic evaluate` itself: `run_evaluation` gets the units (`collect.collect_units`: from the cache, or
drawn through the service's sampler) and writes every output: the rows (`rows.build_frames`), the tables
(`write_tables`), the plots, the report and ``run.json`` (with the history of runs into that directory).
Imports every module of the package; the plots are imported lazily.
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

from app.evaluation.collect import PROPOSALS, collect_units, default_mixture_share
from app.evaluation.instances import load_instances
from app.evaluation.report import write_report
from app.evaluation.rows import DEFAULT_TAU_MULTIPLIERS, build_frames

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
    m_max = m_values[-1]
    instance_list = load_instances(instances, limit)
    engine_tag = "remote" if url else model
    share = default_mixture_share()
    out.mkdir(parents=True, exist_ok=True)

    collected = collect_units(
        instance_list,
        out,
        seeds=seeds,
        proposals=proposals,
        num_candidates=m_max,
        max_tokens=max_tokens,
        url=url,
        model=model,
        resume=resume,
        concurrency=concurrency,
        temperature=temperature,
        top_p=top_p,
        show_progress=show_progress,
    )
    units, computed_units = collected.units, collected.computed
    auctions, advertisers = build_frames(units, m_values, taus)

    from app.evaluation.plots import write_all_plots

    files = write_tables(out, auctions, advertisers)
    if write_plots:
        files += write_all_plots(out, auctions, advertisers)
    wall = time.perf_counter() - started
    summary = EvaluationSummary(
        out=out,
        units_total=len(units),
        units_computed=len(computed_units),
        units_reused=len(units) - len(computed_units),
        wall_seconds=wall,
        collect_seconds_total=sum(data.collect_seconds for data, _ in units),
        auctions=auctions,
        advertisers=advertisers,
    )
    run_info = {
        "instances": str(instances),
        "num_instances": len(instance_list),
        "seeds": seeds,
        "candidates": m_values,
        "proposals": proposals,
        "taus": taus,
        "tau_multipliers": None if taus is not None else list(DEFAULT_TAU_MULTIPLIERS),
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "engine": engine_tag,
        "model_names": sorted({str(data.model_name) for data, _ in units}),
        "mixture_context_share": share if "mixture" in proposals else None,
        "units_total": summary.units_total,
        "units_computed": summary.units_computed,
        "units_reused": summary.units_reused,
        "collect_seconds_total": summary.collect_seconds_total,
        "wall_seconds_this_run": wall,
    }
    # Every run appends to the history, so a resumed re-render keeps the timing of the run that
    # drew the candidates.
    run_path = out / "run.json"
    history = _previous_history(run_path)
    history.append(
        {
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "wall_seconds": round(wall, 2),
            "units_computed": summary.units_computed,
            "units_reused": summary.units_reused,
            "collect_seconds": round(sum(data.collect_seconds for data in computed_units), 2),
            "load_average_1m_start": load_at_start,
            "load_average_1m_end": _load_average(),
            "cpu_count": os.cpu_count(),
        }
    )
    run_info["history"] = history
    files.append(write_report(out, auctions, advertisers, run_info))
    summary.wall_seconds = time.perf_counter() - started
    run_info["wall_seconds_this_run"] = summary.wall_seconds
    history[-1]["wall_seconds"] = round(summary.wall_seconds, 2)
    run_path.write_text(json.dumps(run_info, indent=2) + "\n", encoding="utf-8")
    files.append(run_path)
    summary.files = files
    logger.info("evaluation written", extra={"out": str(out), "units_computed": summary.units_computed})
    return summary


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
