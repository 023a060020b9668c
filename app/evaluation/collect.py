"""Drawing the units of `mosaic evaluate` and `mosaic compare`: `collect_units` reads ``out/cache`` and
draws what it lacks.

A unit draws and scores the largest M once through exactly the service's code
(`CandidateSampler.collect`: prompts → tokenize → generate → score, no billing), against worker URLs or
an in-process worker (`_open_engine`, `_collect_unit`, `_compute_units`), and is cached as soon as it is
done, so an interrupted run resumes. A unit's draw is a `CandidateDraw` (`unit_draw`), the sampler's domain
input; the engine client reports to the no-op observer. Imports `instances`, `units` and `app.contract`;
the service (`app.auction.sampler`, `app.auction.engine_client`, `app.settings`, `workers.server`)
lazily. See docs/DESIGN.md.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from tqdm import tqdm

from app.contract.request import AdvertiserIn, ProposalName
from app.evaluation.instances import Instance
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
    from app.auction.sampler import CandidateDraw, CandidateSampler

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


def unit_draw(spec: UnitSpec, num_candidates: int, max_tokens: int, config: dict[str, Any]) -> CandidateDraw:
    """The unit's candidate draw: its instance's query and advertisers, normalised and checked as a served
    auction's are (an instance's advertisers are the API's `AdvertiserIn`; surrounding whitespace is
    stripped), the largest M, the proposal and the sampling of the unit's configuration."""
    from app.auction.sampler import CandidateDraw

    advertisers = [AdvertiserIn.model_validate(advertiser) for advertiser in spec.instance.advertisers]
    return CandidateDraw(
        query=spec.instance.query.strip(),
        advertisers=tuple(advertiser.profile() for advertiser in advertisers),
        num_candidates=num_candidates,
        proposal=cast(ProposalName, spec.proposal),
        max_tokens=max_tokens,
        temperature=float(config["temperature"]),
        top_p=float(config["top_p"]),
    )


async def _collect_unit(
    engine: _Engine, spec: UnitSpec, num_candidates: int, max_tokens: int, config: dict[str, Any]
) -> UnitData:
    draw = unit_draw(spec, num_candidates, max_tokens, config)
    # The unit's seed (63 bits, as the cached units were drawn) is the auction seed.
    started = time.perf_counter()
    scored = await engine.sampler.collect(draw, spec.unit_seed)
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


def default_mixture_share() -> float:
    from app.settings import Settings

    return float(Settings().mixture_context_share)


@dataclass
class CollectedUnits:
    units: list[tuple[UnitData, Instance]]  # every (instance, seed, proposal), in that order
    computed: list[UnitData]  # those drawn by this run (the rest came from the cache)


def _read_cache(
    specs: list[UnitSpec], cache_dir: Path, config_fields: dict[str, Any], num_candidates: int, resume: bool
) -> tuple[dict[Path, UnitData], list[tuple[UnitSpec, Path, dict[str, Any]]]]:
    """The units cached with the same configuration and at least ``num_candidates`` candidates (none
    without ``resume``), and the others (to draw), each with its cache path and configuration."""
    cached: dict[Path, UnitData] = {}
    pending: list[tuple[UnitSpec, Path, dict[str, Any]]] = []
    for spec in specs:
        path = cache_path(cache_dir, spec)
        config = unit_config(spec, **config_fields)
        hit = read_cached_unit(path, config, num_candidates) if resume else None
        if hit is None:
            pending.append((spec, path, config))
        else:
            cached[path] = hit
    return cached, pending


def collect_units(
    instance_list: list[Instance],
    out: Path,
    *,
    seeds: int,
    proposals: list[str],
    num_candidates: int,
    max_tokens: int,
    url: str | None,
    model: str,
    resume: bool = True,
    concurrency: int | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    show_progress: bool = True,
    description: str = "evaluate",
    cache_from: Path | None = None,
) -> CollectedUnits:
    """Every unit's scored candidates (at least ``num_candidates`` of them): from ``out/cache`` where a
    unit with the same configuration is there, else drawn now through the service's sampler and cached.
    `mosaic evaluate` and `mosaic compare` share it, so both read the same candidates; ``cache_from``
    reads (and fills) another output directory's cache instead of ``out``'s."""
    cache_dir = cache_from or out
    # (instance, seed, proposal) in that order: the order of the units returned
    specs = [UnitSpec(*unit) for unit in itertools.product(instance_list, range(seeds), proposals)]
    config_fields: dict[str, Any] = {
        "max_tokens": max_tokens,
        "engine_tag": "remote" if url else model,
        "temperature": temperature,
        "top_p": top_p,
        "share": default_mixture_share(),
    }
    cached, pending = _read_cache(specs, cache_dir, config_fields, num_candidates, resume)
    computed: dict[Path, UnitData] = {}
    progress = tqdm(
        total=len(specs), initial=len(cached), desc=description, unit="unit", disable=not show_progress
    )
    try:
        if pending:
            computed = asyncio.run(
                _compute_units(
                    pending,
                    url=url,
                    model=model,
                    num_candidates=num_candidates,
                    max_tokens=max_tokens,
                    concurrency=concurrency or (_REMOTE_CONCURRENCY if url else 1),
                    progress=progress,
                )
            )
            cached.update(computed)
    finally:
        progress.close()
    return CollectedUnits(
        units=[(cached[cache_path(cache_dir, spec)], spec.instance) for spec in specs],
        computed=list(computed.values()),
    )
