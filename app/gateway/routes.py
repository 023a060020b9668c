"""The gateway's HTTP routes: health, readiness, `POST /auction`, stored records, Prometheus metrics.

Each handler is thin: it validates (the request models and `enforce_limits`), hands the work to the
service objects that `app.gateway.app` put on `app.state`, and returns their answer. Imports: the
auction service (types), the ledger reader, the request/response models and the security dependency.
"""

from __future__ import annotations

import contextlib
from typing import Any

import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from app.auction.admission import AdmissionController, auction_token_cost
from app.auction.engine_client import EngineClient
from app.auction.service import AuctionService, auction_key, load_record
from app.gateway.metrics import GatewayMetrics
from app.gateway.schemas import (
    AuctionRecord,
    AuctionRequest,
    AuctionResponse,
    enforce_limits,
    error_responses,
)
from app.gateway.security import Principal, require_api_key, require_platform_key
from app.gateway.strict_json import StrictJSONRoute
from app.ledger.reader import LedgerReader
from app.settings import Settings

router = APIRouter(route_class=StrictJSONRoute)


@router.get("/healthz", tags=["health"], summary="Liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    tags=["health"],
    summary="Readiness: workers and Redis reachable",
    responses={503: {"description": "Not ready (the same body, `ready: false`)"}},
)
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


@router.post(
    "/auction",
    response_model=AuctionResponse,
    response_model_exclude_none=True,
    tags=["auction"],
    summary="Run one MOSAIC auction and return the sampled reply",
    responses=error_responses(401, 403, 413, 422, 429, 500, 502, 503, 504),
)
async def run_auction(
    body: AuctionRequest, request: Request, principal: Principal = Depends(require_platform_key)
) -> AuctionResponse:
    settings: Settings = request.app.state.settings
    enforce_limits(body, settings)
    service: AuctionService = request.app.state.auctions
    admission: AdmissionController = request.app.state.admission
    cost = auction_token_cost(
        body.candidates or settings.default_candidates,
        body.max_tokens or settings.default_max_tokens,
        len(body.advertisers),
        body.proposal,
    )
    # Admission comes after validation and before any model work: a refusal (429) costs nothing.
    async with admission.admit(principal.key_id, cost):
        return await service.run(body)


@router.get(
    "/auctions/{auction_id}",
    response_model=AuctionRecord,
    tags=["auction"],
    summary="The full audit record of a served auction (candidates included)",
    responses=error_responses(401, 404, 422, 503),
)
async def get_auction(
    auction_id: str, request: Request, principal: Principal = Depends(require_api_key)
) -> Any:
    if len(auction_id) > 64 or not auction_id.isalnum():
        raise HTTPException(status_code=404, detail=f"auction {auction_id!r} not found")
    redis_client: aioredis.Redis = request.app.state.redis
    record = load_record(await redis_client.get(auction_key(auction_id)))
    # An advertiser key sees only the auctions it took part in; others answer as if absent.
    if (
        record is not None
        and principal.scope == "advertiser"
        and principal.advertiser_id not in {row.get("id") for row in record.get("advertisers", [])}
    ):
        record = None
    if record is None:
        raise HTTPException(status_code=404, detail=f"auction {auction_id!r} not found (or expired)")
    return record


@router.get(
    "/metrics",
    dependencies=[Depends(require_platform_key)],
    tags=["health"],
    summary="Prometheus metrics (text exposition format)",
    response_class=PlainTextResponse,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        **error_responses(401, 403),
    },
)
async def prometheus_metrics(request: Request) -> PlainTextResponse:
    metrics: GatewayMetrics = request.app.state.metrics
    reader: LedgerReader | None = getattr(request.app.state, "ledger_reader", None)
    if reader is not None:
        with contextlib.suppress(RedisError, OSError):
            summary = await reader.summary()
            metrics.billing_stream_length.set(summary.get("stream_length", 0) or 0)
            metrics.billing_pending.set(summary.get("pending", 0) or 0)
            metrics.billing_lag.set(summary.get("lag", 0) or 0)
    return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
