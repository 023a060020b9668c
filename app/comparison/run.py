"""`mosaic compare` itself: the units from the evaluation cache (drawn where missing), every mechanism on
them, then ``compare.csv``, ``compare.md``, the figures and ``compare.json``.

The units are `mosaic evaluate`'s (`app.evaluation.collect.collect_units`, same cache layout under
``OUT/cache``), so pointing both commands at one directory draws the candidates once. Imports `rows`,
`report`, `mechanisms` and the evaluation's collection.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from app.comparison.mechanisms import MECHANISMS
from app.comparison.report import write_report
from app.comparison.rows import build_frame
from app.evaluation.collect import PROPOSALS, collect_units
from app.evaluation.instances import load_instances

logger = logging.getLogger(__name__)


@dataclass
class ComparisonSummary:
    out: Path
    frame: pd.DataFrame
    units_computed: int
    units_reused: int
    wall_seconds: float
    files: list[Path] = field(default_factory=list)


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
) -> ComparisonSummary:
    """Run every mechanism on the same candidates and write the report into ``out``."""
    started = time.perf_counter()
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
    instance_list = load_instances(instances, limit)
    out.mkdir(parents=True, exist_ok=True)
    collected = collect_units(
        instance_list,
        out,
        seeds=seeds,
        proposals=proposals,
        num_candidates=m_values[-1],
        max_tokens=max_tokens,
        url=url,
        model=model,
        resume=resume,
        show_progress=show_progress,
        description="compare: draw",
        cache_from=cache_from,
    )
    resolve_started = time.perf_counter()
    frame = build_frame(
        collected.units, m_values, mechanisms=mechanisms, optimise_evaluations=optimise_evaluations
    )
    resolve_seconds = time.perf_counter() - resolve_started
    csv_path = out / "compare.csv"
    frame.to_csv(csv_path, index=False)
    run_info = {
        "instances": str(instances),
        "num_instances": len(instance_list),
        "seeds": seeds,
        "candidates": m_values,
        "proposals": proposals,
        "mechanisms": mechanisms,
        "max_tokens": max_tokens,
        "optimise_evaluations": optimise_evaluations,
        "engine": "remote" if url else model,
        "model_names": sorted({str(data.model_name) for data, _ in collected.units}),
        "units_total": len(collected.units),
        "units_computed": len(collected.computed),
        "cache": str((cache_from or out) / "cache"),
        "resolve_seconds": round(resolve_seconds, 2),
    }
    files = [csv_path, *write_report(frame, out, run_info)]
    wall = time.perf_counter() - started
    run_info["wall_seconds"] = round(wall, 2)
    info_path = out / "compare.json"
    info_path.write_text(json.dumps(run_info, indent=2) + "\n", encoding="utf-8")
    files.append(info_path)
    logger.info("comparison written", extra={"out": str(out), "rows": len(frame)})
    return ComparisonSummary(
        out=out,
        frame=frame,
        units_computed=len(collected.computed),
        units_reused=len(collected.units) - len(collected.computed),
        wall_seconds=wall,
        files=files,
    )
