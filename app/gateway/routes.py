"""The gateway's HTTP routes: health, readiness, `POST /auction`, stored records and their what-if
(`POST /auctions/{id}/resolve`: the pure mechanism on the stored candidates, never billed), metrics.

Each handler is thin: it validates (the request models and `enforce_limits`), hands the work to the
service objects it is given as typed dependencies (`app.gateway.deps`; `POST /auction` through
`app.gateway.auction_call`: admission, idempotency keys, abandoned requests), and returns their answer.
Imports: the auction service (types) and its what-if, the stored records (app.archive.reader: Redis,
then the archive), the ledger's render and idempotency names, the API's models (`app.contract`), the
gateway's dependencies and security. Every route's function name is its OpenAPI operationId
(`app.gateway.app`). The layout: docs/DESIGN.md § Layout.
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Header, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.models import Example
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from redis.exceptions import RedisError

from app.archive.reader import RecordReader
from app.auction.engine_client import EngineClient
from app.auction.sealed import SealedFieldError, seal_record, sealed_whatif
from app.auction.whatif import WhatIfInputError, resolve_record
from app.contract.disclosure import record_disclosure
from app.contract.limits import enforce_limits
from app.contract.request import AuctionRequest
from app.contract.result import AuctionRecord, AuctionResponse
from app.contract.sealed import SealedAuctionRecord, SealedWhatIfResponse
from app.contract.whatif import WhatIfRequest, WhatIfResponse
from app.gateway.auction_call import serve_auction
from app.gateway.deps import (
    AdmissionDep,
    AuctionServiceDep,
    EngineClientDep,
    MetricsDep,
    RecordsDep,
    RedisDep,
    RedisHealthDep,
    RedisSupervisorDep,
    RunningLedgerReaderDep,
    SettingsDep,
)
from app.gateway.metrics import GatewayMetrics
from app.gateway.openapi import error_responses
from app.gateway.security import Principal, caller, require_api_key, require_platform_key
from app.gateway.strict_json import StrictJSONRoute
from app.ledger.idempotency import HEADER, KEY_PATTERN, REPLAYED_HEADER
from app.ledger.redis_health import RedisHealth
from app.ledger.render import RenderLedger
from app.settings import Settings

router = APIRouter(route_class=StrictJSONRoute)


class RenderResult(BaseModel):
    """POST /auctions/{id}/render: the charge is billed (now, or by an earlier render)."""

    auction_id: str
    billing: Literal["billed"]
    billed_now: bool = Field(description="This call billed it (false: it was billed before).")
    stream_id: str | None = Field(None, description="The billing event's id in the stream.")


@router.get(
    "/healthz",
    tags=["health"],
    summary="Liveness: 503 only when the embedded Redis could not be brought back (restart the process)",
    responses={503: {"description": "Not alive (`status: failing` and the cause)"}},
)
async def healthz(supervisor: RedisSupervisorDep) -> JSONResponse:
    if supervisor is not None and not supervisor.alive:
        return JSONResponse(status_code=503, content={"status": "failing", "cause": supervisor.cause})
    return JSONResponse(content={"status": "ok"})


@router.get(
    "/readyz",
    tags=["health"],
    summary="Readiness: can serve an auction now (a healthy worker and a Redis that takes writes)",
    description="Asks for no key (probes carry none) and then answers only `ready`; with a platform "
    "key (or auth off) also each worker's state by URL, Redis' and, when Redis is not ready, why.",
    responses={503: {"description": "Not ready (the same body, `ready: false`)"}},
)
async def readyz(
    request: Request, engine_client: EngineClientDep, redis_health: RedisHealthDep, metrics: MetricsDep
) -> JSONResponse:
    answer = _readiness(engine_client, redis_health, metrics)
    principal = caller(request)
    if principal is None or principal.scope == "advertiser":  # the deployment's layout is not theirs
        return JSONResponse(status_code=answer.status_code, content={"ready": answer.status_code == 200})
    return answer


def _readiness(
    engine_client: EngineClient | None, redis_health: RedisHealth | None, metrics: GatewayMetrics
) -> JSONResponse:
    """The readiness answer, and `mosaic_ready` set to it. No I/O here: the states are kept current
    by background probes (app.auction.worker_health, app.ledger.redis_health), so this answers at once
    whatever hangs."""
    workers = engine_client.health() if engine_client is not None else {}
    redis_ok = redis_health is not None and redis_health.state.writable
    ready = any(workers.values()) and redis_ok
    content: dict[str, Any] = {"ready": ready, "workers": workers, "redis": redis_ok}
    if redis_health is not None and not redis_ok:
        content["redis_cause"] = redis_health.state.cause
    metrics.ready.set(1 if ready else 0)
    return JSONResponse(status_code=200 if ready else 503, content=content)


# The first is what Swagger's "Try it out" sends: a request that runs as it is.
AUCTION_EXAMPLES = {
    "inline": Example(
        summary="two advertisers given inline",
        value={
            "query": "Learning to play the guitar.",
            "advertisers": [
                {"id": "strummaster", "name": "StrumMaster", "description": "selling guitars and tuners"},
                {"id": "chordify", "name": "Chordify", "description": "online guitar lessons"},
            ],
            "candidates": 4,
            "max_tokens": 32,
            "tmax_ms": 60000,
        },
    ),
    "select": Example(
        summary="the service chooses up to 3 registered campaigns",
        value={"query": "Learning to play the guitar.", "select": {"max": 3}, "user_id": "user-42"},
    ),
}


@router.post(
    "/auction",
    response_model=AuctionResponse,
    response_model_exclude_none=True,
    tags=["auction"],
    summary="Run one MOSAIC auction and return the sampled reply",
    description="With an `Idempotency-Key` the first request's outcome (a success, or a 5xx after "
    "model work began) is stored for IDEMPOTENCY_TTL_S; a retry with the same key and body gets that "
    "status and body again with `Idempotent-Replayed: true` and is not billed again.",
    responses={
        200: {
            "description": "The auction's outcome (or, with `Idempotent-Replayed: true`, a stored one)",
            "headers": {
                REPLAYED_HEADER: {
                    "description": "`true` when this is the stored answer of an earlier request",
                    "schema": {"type": "string", "enum": ["true"]},
                }
            },
        },
        **error_responses(401, 403, 409, 413, 422, 429, 500, 502, 503, 504),
    },
)
async def run_auction(
    body: Annotated[AuctionRequest, Body(openapi_examples=AUCTION_EXAMPLES)],
    request: Request,
    settings: SettingsDep,
    service: AuctionServiceDep,
    admission: AdmissionDep,
    redis_health: RedisHealthDep,
    metrics: MetricsDep,
    principal: Principal = Depends(require_platform_key),
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=HEADER,
            pattern=KEY_PATTERN,
            description="1-255 visible ASCII characters, scoped to the API key: a retry with the same "
            "key and body is answered the first outcome and billed once (same key, other body: 422; "
            "while the first runs: 409).",
        ),
    ] = None,
) -> AuctionResponse | Response:
    enforce_limits(body, settings)  # refused (4xx) before any work: nothing stored under the key
    if redis_health is not None:
        redis_health.check()  # Redis down or full: 503 naming it, before any model work
    participants = await service.prepare(body)  # the campaigns that enter: their texts count in the cost
    try:
        cost = service.admission_cost(participants.request)  # over one auction's share: 422 naming fields
        return await serve_auction(
            body,
            request,
            principal,
            idempotency_key,
            service=service,
            admission=admission,
            metrics=metrics,
            cost=cost,
            participants=participants,
        )
    finally:  # frequency cap slots of an auction that never ran (429, a replay, ...) go back
        await service.release(participants)


@router.post(
    "/auctions/{auction_id}/render",
    response_model=RenderResult,
    dependencies=[Depends(require_platform_key)],
    tags=["auction"],
    summary="BILLING_MODE=render: the reply was shown, bill its pending charge (exactly once)",
    responses=error_responses(401, 403, 404, 409, 410, 422, 503),
)
async def render_auction(
    auction_id: str,
    redis_client: RedisDep,
    records: RecordsDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    service: AuctionServiceDep,
) -> RenderResult:
    if len(auction_id) > 64 or not auction_id.isalnum():
        raise HTTPException(status_code=404, detail=f"auction {auction_id!r} not found")
    record = await records.record(auction_id)
    if record is None:
        raise HTTPException(status_code=404, detail=f"auction {auction_id!r} not found (or expired)")
    if record.get("test"):
        raise HTTPException(status_code=409, detail=f"auction {auction_id!r} is a test auction: never billed")
    if record.get("no_fill"):
        raise HTTPException(status_code=409, detail=f"auction {auction_id!r} is a no-fill: nothing to bill")
    state, stream_id, changed = await RenderLedger(redis_client, settings).render(auction_id)
    if state == "missing":  # billed when it was served (BILLING_MODE=auction)
        return RenderResult(auction_id=auction_id, billing="billed", billed_now=False)
    if state == "expired":
        raise HTTPException(
            status_code=410,
            detail=f"auction {auction_id!r} was not rendered within RENDER_WINDOW_S="
            f"{settings.render_window_s}s: its charge expired and is never billed",
        )
    if changed:
        metrics.revenue.labels(str(record.get("currency", settings.currency))).inc(float(record["revenue"]))
        await service.post_rendered(record)  # its campaigns' spend and pacing steps
    return RenderResult(auction_id=auction_id, billing="billed", stream_id=stream_id, billed_now=changed)


@router.get(
    "/auctions/{auction_id}",
    response_model=AuctionRecord | SealedAuctionRecord,
    tags=["auction"],
    summary="The audit record of a served auction (candidates included); sealed for an advertiser key",
    description="A platform key (or auth off) gets the full record (`AuctionRecord`). An advertiser key "
    "gets her sealed view (`SealedAuctionRecord`, `view: sealed`): her own request entry, rewards, "
    "payment and utility, the candidates' texts and scores, and of the others only their rewards summed "
    "per candidate (what her payment needs): no other advertiser's id, entry, value scale, payment or "
    "rewards.",
    responses=error_responses(401, 404, 422, 503),
)
async def get_auction(
    auction_id: str,
    records: RecordsDep,
    settings: SettingsDep,
    principal: Principal = Depends(require_api_key),
) -> Any:
    record = await readable_record(auction_id, records, settings, principal)
    if principal.scope == "advertiser" and principal.advertiser_id is not None:
        return seal_record(record, principal.advertiser_id)
    return record


async def readable_record(
    auction_id: str, records: RecordReader, settings: Settings, principal: Principal
) -> dict[str, Any]:
    """The stored record (in Redis, or archived: the same body), or 404 when absent, expired, or not
    the caller's (an advertiser key sees only the auctions it took part in; others answer as if absent)."""
    if len(auction_id) > 64 or not auction_id.isalnum():
        raise HTTPException(status_code=404, detail=f"auction {auction_id!r} not found")
    record = await records.record(auction_id)
    if (
        record is not None
        and principal.scope == "advertiser"
        and principal.advertiser_id not in {row.get("id") for row in record.get("advertisers", [])}
    ):
        record = None
    if record is None:
        raise HTTPException(status_code=404, detail=f"auction {auction_id!r} not found (or expired)")
    if "disclosure" not in record:  # stored before disclosures: the same rule on its payments
        record["disclosure"] = record_disclosure(record).model_dump(mode="json")
    if record.get("billing") == "pending":  # BILLING_MODE=render: the charge's state now
        record["billing"] = await RenderLedger(records.redis, settings).state(auction_id) or "expired"
    return record


@router.post(
    "/auctions/{auction_id}/resolve",
    response_model=WhatIfResponse | SealedWhatIfResponse,
    tags=["auction"],
    summary="What-if: the mechanism again on a served auction's candidates (never billed, never stored)",
    description="Allocation, payments and ESS under another τ, a subset of the advertisers or changed "
    "value scales, on the SAME stored candidates: no model call, no draw, no billing, no record. "
    "Same keys as `GET /auctions/{auction_id}`; 409 naming the field for an advertiser the auction did "
    "not have. An advertiser key gets her own figures only (`SealedWhatIfResponse`, computed from her "
    "sealed view): it may change τ and its own value scale, and `advertisers` may be only its own id "
    "(the others dropped); naming any other advertiser is 403 naming the field.",
    responses=error_responses(401, 403, 404, 409, 413, 422, 503),
)
async def resolve_auction(
    auction_id: str,
    records: RecordsDep,
    settings: SettingsDep,
    body: WhatIfRequest = Body(
        openapi_examples={
            "tau": Example(summary="another τ", value={"tau": 2.0}),
            "scales": Example(
                summary="τ = 1, a value scale doubled",
                value={"tau": 1.0, "value_scales": {"strummaster": 2.0}},
            ),
        }
    ),
    principal: Principal = Depends(require_api_key),
) -> WhatIfResponse | SealedWhatIfResponse:
    record = await readable_record(auction_id, records, settings, principal)
    if record.get("no_fill"):
        raise HTTPException(status_code=409, detail=f"auction {auction_id!r} is a no-fill: no candidates")
    try:
        if principal.scope == "advertiser" and principal.advertiser_id is not None:
            return sealed_whatif(record, body, principal.advertiser_id)
        return resolve_record(record, body)
    except SealedFieldError as error:  # another advertiser named by an advertiser key
        raise HTTPException(status_code=403, detail=f"auction {auction_id!r}: {error}") from None
    except WhatIfInputError as error:  # an advertiser this auction did not have (WhatIfInputError: 409)
        raise HTTPException(status_code=409, detail=f"auction {auction_id!r}: {error}") from None
    except ValueError as error:  # the mechanism: rewards / τ beyond float64
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("body", "tau"), "msg": str(error), "input": body.tau}]
        ) from None


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
async def prometheus_metrics(
    metrics: MetricsDep,
    reader: RunningLedgerReaderDep,
    engine_client: EngineClientDep,
    redis_health: RedisHealthDep,
) -> PlainTextResponse:
    if reader is not None:
        with contextlib.suppress(RedisError, OSError):
            summary = await reader.summary()
            metrics.billing_stream_length.set(summary.get("stream_length", 0) or 0)
            metrics.billing_pending.set(summary.get("pending", 0) or 0)
            metrics.billing_lag.set(summary.get("lag", 0) or 0)
            metrics.dead_letters.set(summary.get("dead_letters", 0) or 0)
            metrics.conflicts.set(summary.get("conflicts", 0) or 0)
            if summary.get("reconcile_unix") is not None:
                metrics.reconcile_differences.set(summary.get("reconcile_differences") or 0)
                metrics.reconcile_timestamp.set(summary["reconcile_unix"])
    _readiness(engine_client, redis_health, metrics)  # refreshes mosaic_ready
    return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
