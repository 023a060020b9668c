"""`mosaic evaluate` itself: `run_evaluation` draws what the cache lacks and writes every output.

A unit draws and scores the largest M once through exactly the service's code
(`CandidateSampler.collect`: prompts → tokenize → generate → score, no billing), against worker URLs
or an in-process worker (`_open_engine`, `_collect_unit`, `_compute_units`); finished units come from
the cache, so a rerun is resumable. Then the rows (`rows.build_frames`), the tables (`write_tables`),
the plots, the report and ``run.json`` (with the history of runs into that directory). Imports every
module of the package; the service (`app.auction.sampler`, `app.auction.engine_client`,
`app.gateway.schemas`, `app.settings`, `workers.server`) and the plots are imported lazily.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from app.evaluation.instances import load_instances
from app.evaluation.report import write_report
from app.evaluation.rows import DEFAULT_TAU_MULTIPLIERS, build_frames
from app.evaluation.units import (
    UnitData,
    UnitSpec,
    cache_path,
    read_cached_unit,
    unit_config,
    write_cached_unit,
)

if TYPE_CHECKING:
    from app.auction.engine_client import EngineClient
    from app.auction.sampler import CandidateSampler

logger = logging.getLogger(__name__)

PROPOSALS = ("context", "reference", "mixture")
EMBEDDED_WORKER_URL = "http://embedded-worker"
# Batch evaluation on CPU: one generate request of 16 × 48 tokens can take minutes on a busy machine.
EVALUATION_WORKER_TIMEOUT_S = 3600.0
_REMOTE_CONCURRENCY = 4


@dataclass
class _Engine:
    sampler: CandidateSampler
    client: EngineClient
    settings_share: float


async def _open_engine(url: str | None, model: str) -> _Engine:
    import httpx

    from app.auction.engine_client import EngineClient
    from app.auction.sampler import CandidateSampler
    from app.settings import Settings

    transports: dict[str, httpx.AsyncBaseTransport] = {}
    if url:
        worker_urls = [part.strip().rstrip("/") for part in url.split(",") if part.strip()]
        settings = Settings(worker_urls=worker_urls, worker_timeout_s=EVALUATION_WORKER_TIMEOUT_S)
    else:
        from workers.server import create_app as create_worker_app
        from workers.server import load_engine

        settings = Settings(worker_model=model, worker_timeout_s=EVALUATION_WORKER_TIMEOUT_S)
        engine = await asyncio.to_thread(load_engine, model, settings.worker_device, settings.worker_dtype)
        transports[EMBEDDED_WORKER_URL] = httpx.ASGITransport(app=create_worker_app(engine))
        worker_urls = [EMBEDDED_WORKER_URL]
    client = EngineClient(settings, worker_urls, transports)
    sampler = CandidateSampler(settings, client)
    return _Engine(sampler=sampler, client=client, settings_share=settings.mixture_context_share)


async def _collect_unit(
    engine: _Engine, spec: UnitSpec, num_candidates: int, max_tokens: int, config: dict[str, Any]
) -> UnitData:
    from app.gateway.schemas import AuctionRequest

    # Validated as the gateway validates a request body (the same strict model).
    request = AuctionRequest.model_validate(
        {
            "query": spec.instance.query,
            "advertisers": list(spec.instance.advertisers),
            "candidates": num_candidates,
            "proposal": spec.proposal,
            "max_tokens": max_tokens,
            "temperature": float(config["temperature"]),
            "top_p": float(config["top_p"]),
        }
    )  # the unit's seed (63 bits, as the cached units were drawn) goes to collect, not the request
    started = time.perf_counter()
    scored = await engine.sampler.collect(request, spec.unit_seed)
    elapsed = time.perf_counter() - started
    candidates = scored.candidate_set.candidates
    return UnitData(
        instance_id=spec.instance.id,
        seed=spec.seed,
        proposal=spec.proposal,
        unit_seed=spec.unit_seed,
        config=json.loads(json.dumps(config)),
        collect_seconds=elapsed,
        model_name=await engine.client.model_name(),
        texts=[c.text for c in candidates],
        num_tokens=[len(c.token_ids) for c in candidates],
        finish_reasons=[c.finish_reason for c in candidates],
        sources=list(scored.candidate_set.sources),
        log_ref=np.asarray(scored.log_ref, dtype=np.float64),
        log_advertisers=np.asarray(scored.log_advertisers, dtype=np.float64),
        log_proposal=np.asarray(scored.log_proposal, dtype=np.float64),
        log_context=None if scored.log_context is None else np.asarray(scored.log_context, dtype=np.float64),
    )


async def _compute_units(
    pending: list[tuple[UnitSpec, Path, dict[str, Any]]],
    *,
    url: str | None,
    model: str,
    num_candidates: int,
    max_tokens: int,
    concurrency: int,
    progress: tqdm,
) -> dict[Path, UnitData]:
    engine = await _open_engine(url, model)
    results: dict[Path, UnitData] = {}
    semaphore = asyncio.Semaphore(concurrency)

    async def one(spec: UnitSpec, path: Path, config: dict[str, Any]) -> None:
        async with semaphore:
            data = await _collect_unit(engine, spec, num_candidates, max_tokens, config)
        write_cached_unit(path, data)
        results[path] = data
        progress.set_postfix_str(
            f"{spec.instance.id}/s{spec.seed}/{spec.proposal} {data.collect_seconds:.1f}s"
        )
        progress.update(1)

    try:
        await asyncio.gather(*(one(spec, path, config) for spec, path, config in pending))
    finally:
        await engine.client.aclose()
    return results


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------


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


def _default_mixture_share() -> float:
    from app.settings import Settings

    return float(Settings().mixture_context_share)


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
    share = _default_mixture_share()
    out.mkdir(parents=True, exist_ok=True)

    specs = [
        UnitSpec(instance, seed, proposal)
        for instance in instance_list
        for seed in range(seeds)
        for proposal in proposals
    ]
    cached: dict[Path, UnitData] = {}
    pending: list[tuple[UnitSpec, Path, dict[str, Any]]] = []
    for spec in specs:
        path = cache_path(out, spec)
        config = unit_config(
            spec,
            max_tokens=max_tokens,
            engine_tag=engine_tag,
            temperature=temperature,
            top_p=top_p,
            share=share,
        )
        hit = read_cached_unit(path, config, m_max) if resume else None
        if hit is None:
            pending.append((spec, path, config))
        else:
            cached[path] = hit

    computed_units: list[UnitData] = []
    progress = tqdm(
        total=len(specs), initial=len(cached), desc="evaluate", unit="unit", disable=not show_progress
    )
    try:
        if pending:
            computed = asyncio.run(
                _compute_units(
                    pending,
                    url=url,
                    model=model,
                    num_candidates=m_max,
                    max_tokens=max_tokens,
                    concurrency=concurrency or (_REMOTE_CONCURRENCY if url else 1),
                    progress=progress,
                )
            )
            cached.update(computed)
            computed_units = list(computed.values())
    finally:
        progress.close()

    units = [(cached[cache_path(out, spec)], spec.instance) for spec in specs]
    auctions, advertisers = build_frames(units, m_values, taus)

    from app.evaluation.plots import write_all_plots

    files = write_tables(out, auctions, advertisers)
    if write_plots:
        files += write_all_plots(out, auctions, advertisers)
    wall = time.perf_counter() - started
    summary = EvaluationSummary(
        out=out,
        units_total=len(specs),
        units_computed=len(pending),
        units_reused=len(specs) - len(pending),
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
