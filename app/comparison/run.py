"""`mosaic compare` itself: the units from the evaluation cache (drawn where missing), every mechanism on
them, then ``compare.csv``, ``compare.md``, the figures and ``compare.json``.

The units are `mosaic evaluate`'s (`app.evaluation.collect.collect_units`, same cache layout under
``OUT/cache``), so pointing both commands at one directory draws the candidates once. ``beside``: other
runs' directories (another model's ``compare.csv`` + ``compare.json``) whose rows join this run's in the
report, a panel row and a section per model; :func:`rewrite_report` redraws a directory's report and
figures from its committed ``compare.csv`` without drawing or resolving anything. Imports `rows`,
`report`, `mechanisms` and the evaluation's instances and collection (the layout: docs/DESIGN.md §
Layout).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from app.comparison.mechanisms import MECHANISMS
from app.comparison.report import write_report
from app.comparison.rows import KEYS, build_frame
from app.evaluation.collect import PROPOSALS, CollectedUnits, collect_units
from app.evaluation.instances import Instance, load_instances

logger = logging.getLogger(__name__)


@dataclass
class ComparisonSummary:
    out: Path
    frame: pd.DataFrame
    units_computed: int
    units_reused: int
    wall_seconds: float
    files: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class _Plan:
    """The checked arguments of one run, as compare.json records them."""

    instances: Path
    instance_list: list[Instance]
    seeds: int
    m_values: list[int]
    proposals: list[str]
    mechanisms: list[str]
    max_tokens: int
    optimise_evaluations: int
    engine: str  # "remote" (workers by URL) or the in-process model's name


def run_comparison(
    instances: Path,
    out: Path,
    *,
    seeds: int = 3,
    candidates: list[int] | None = None,
    proposals: list[str] | None = None,
    limit: int | None = 8,
    max_tokens: int = 48,
    url: str | None = None,
    model: str = "smollm2",
    mechanisms: list[str] | None = None,
    optimise_evaluations: int = 200,
    resume: bool = True,
    show_progress: bool = True,
    cache_from: Path | None = None,
    beside: list[Path] | None = None,
) -> ComparisonSummary:
    """Run every mechanism on the same candidates; the report into ``out`` (``beside``: other models)."""
    started = time.perf_counter()
    plan = _checked_plan(
        instances,
        limit,
        seeds,
        candidates,
        proposals,
        mechanisms,
        max_tokens,
        optimise_evaluations,
        url,
        model,
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
        show_progress=show_progress,
        description="compare: draw",
        cache_from=cache_from,
    )
    frame, resolve_seconds = _resolve(collected, plan)
    run_info = _run_info(plan, collected, cache_from or out, resolve_seconds)
    frame = with_beside(frame, run_info, beside or [])
    files, wall = _write_outputs(frame, out, run_info, started)
    logger.info("comparison written", extra={"out": str(out), "rows": len(frame)})
    return ComparisonSummary(
        out=out,
        frame=frame,
        units_computed=len(collected.computed),
        units_reused=len(collected.units) - len(collected.computed),
        wall_seconds=wall,
        files=files,
    )


def _checked_plan(
    instances: Path,
    limit: int | None,
    seeds: int,
    candidates: list[int] | None,
    proposals: list[str] | None,
    mechanisms: list[str] | None,
    max_tokens: int,
    optimise_evaluations: int,
    url: str | None,
    model: str,
) -> _Plan:
    """The run's plan (defaults filled in, its instances read); ValueError naming the first argument
    out of range (before anything is drawn or written)."""
    m_values = sorted(set(candidates or [1, 2, 4, 8, 16]))
    proposals = proposals or ["context", "reference"]
    mechanisms = mechanisms or list(MECHANISMS)
    if m_values[0] < 1:
        raise ValueError(f"candidates (M) must be >= 1, got {m_values}")
    if seeds < 1:
        raise ValueError("seeds must be >= 1")
    unknown = sorted(set(proposals) - set(PROPOSALS)) + sorted(set(mechanisms) - set(MECHANISMS))
    if unknown:
        raise ValueError(f"unknown proposals or mechanisms {unknown}; mechanisms are {list(MECHANISMS)}")
    if optimise_evaluations < 0:
        raise ValueError("optimise_evaluations must be >= 0")
    return _Plan(
        instances=instances,
        instance_list=load_instances(instances, limit),
        seeds=seeds,
        m_values=m_values,
        proposals=proposals,
        mechanisms=mechanisms,
        max_tokens=max_tokens,
        optimise_evaluations=optimise_evaluations,
        engine="remote" if url else model,
    )


def _resolve(collected: CollectedUnits, plan: _Plan) -> tuple[pd.DataFrame, float]:
    """Every mechanism on every unit's candidates (`rows.build_frame`), and the seconds it took."""
    resolve_started = time.perf_counter()
    frame = build_frame(
        collected.units,
        plan.m_values,
        mechanisms=plan.mechanisms,
        optimise_evaluations=plan.optimise_evaluations,
    )
    return frame, time.perf_counter() - resolve_started


def _write_outputs(
    frame: pd.DataFrame, out: Path, run_info: dict[str, Any], started: float
) -> tuple[list[Path], float]:
    """compare.csv, the report and its figures, then compare.json with the run's wall time; every path
    written and that wall time."""
    csv_path = out / "compare.csv"
    frame.to_csv(csv_path, index=False)
    files = [csv_path, *write_report(frame, out, run_info)]
    wall = time.perf_counter() - started
    run_info["wall_seconds"] = round(wall, 2)
    info_path = out / "compare.json"
    info_path.write_text(json.dumps(run_info, indent=2) + "\n", encoding="utf-8")
    files.append(info_path)
    return files, wall


def read_results(directory: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A compare run's rows (``compare.csv``) and configuration (``compare.json``). Rows written before
    the ``model`` column existed get the run's one model."""
    info: dict[str, Any] = json.loads((directory / "compare.json").read_text(encoding="utf-8"))
    frame = pd.read_csv(directory / "compare.csv")
    if "model" not in frame.columns:
        names = info.get("model_names") or [info.get("engine", "unknown")]
        if len(names) != 1:
            raise ValueError(f"{directory}/compare.csv has no model column and its run names {names}")
        frame.insert(0, "model", str(names[0]))
    frame["instance_id"] = frame["instance_id"].astype(str)
    return frame, info


def with_beside(frame: pd.DataFrame, run_info: dict[str, Any], beside: list[Path]) -> pd.DataFrame:
    """``frame`` with the rows of the runs in ``beside`` (each replacing any rows of its models);
    ``run_info["beside"]`` records what joined."""
    joined = []
    for directory in beside:
        other, info = read_results(directory)
        frame = frame[~frame["model"].isin(other["model"].unique())]
        joined.append(other)
        summary = {key: info.get(key) for key in ("model_names", "num_instances", "seeds", "max_tokens")}
        run_info.setdefault("beside", []).append({"directory": str(directory), **summary})
    if not joined:
        return frame
    combined = pd.concat([frame, *joined], ignore_index=True)
    combined["instance_id"] = combined["instance_id"].astype(str)
    return combined.sort_values(KEYS, kind="stable").reset_index(drop=True)


def rewrite_report(out: Path, beside: list[Path] | None = None) -> list[Path]:
    """Redraw ``out``'s figures and ``compare.md`` from its ``compare.csv`` (and ``beside`` runs');
    ``compare.csv`` is rewritten only when rows joined. Returns the paths written."""
    frame, info = read_results(out)
    files: list[Path] = []
    if beside:
        frame = with_beside(frame, info, beside)
        frame.to_csv(out / "compare.csv", index=False)
        (out / "compare.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        files += [out / "compare.csv", out / "compare.json"]
    return [*files, *write_report(frame, out, info)]


def _run_info(
    plan: _Plan, collected: CollectedUnits, cache_root: Path, resolve_seconds: float
) -> dict[str, Any]:
    """compare.json's configuration and counts (the wall time is added last)."""
    return {
        "instances": str(plan.instances),
        "num_instances": len(plan.instance_list),
        "seeds": plan.seeds,
        "candidates": plan.m_values,
        "proposals": plan.proposals,
        "mechanisms": plan.mechanisms,
        "max_tokens": plan.max_tokens,
        "optimise_evaluations": plan.optimise_evaluations,
        "engine": plan.engine,
        "model_names": sorted({str(data.model_name) for data, _ in collected.units}),
        "units_total": len(collected.units),
        "units_computed": len(collected.computed),
        "cache": str(cache_root / "cache"),
        "resolve_seconds": round(resolve_seconds, 2),
    }
