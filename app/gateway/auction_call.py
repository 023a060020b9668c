"""One `POST /auction` call around the auction: Idempotency-Key replay, abandonment, stored outcome.

Job: `serve_auction` (the route hands it the validated body, the caller and the key) 1. with a key,
claims it before any model work, or answers the stored outcome (`Idempotent-Replayed: true`, nothing
billed) or 409/422; 2. runs the auction as a task beside a watch of the client's connection: a
client that disconnects before the billing write cancels the task (its worker requests with it),
nothing is billed or stored, the key is given back, `mosaic_auctions_total{outcome="abandoned"}`;
after the billing write the auction stands (retrievable by id and by its key); 3. stores a 5xx
that happened after the claim under the key (`app.gateway.errors.fault_answer`: the same answer
as the handlers), and gives the key back after a 4xx (refused: not stored). Admission control,
when wired, goes after the replay check (a replay costs no admission). Imports the auction
service, the ledger's idempotency store, the gateway's errors, metrics and models.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from app.auction.service import AuctionService, RunControl, deadline_s
from app.gateway.errors import fault_answer
from app.gateway.metrics import GatewayMetrics
from app.gateway.schemas import AuctionRequest, AuctionResponse
from app.gateway.security import Principal
from app.ledger.idempotency import (
    REPLAYED_HEADER,
    IdempotencyClaim,
    IdempotencyLostError,
    StoredOutcome,
    fingerprint,
)

logger = logging.getLogger(__name__)

# What an abandoned request is answered (nobody reads it: the client is gone). nginx's convention.
CLIENT_CLOSED_STATUS = 499


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body is read already: the next message says it)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def serve_auction(
    body: AuctionRequest, request: Request, principal: Principal, idempotency_key: str | None
) -> AuctionResponse | Response:
    service: AuctionService = request.app.state.auctions
    control = RunControl()
    if idempotency_key is not None:
        begin = time.perf_counter()
        claimed = await service.idempotency.claim(
            principal.key_id,
            idempotency_key,
            fingerprint(body.model_dump(mode="json")),
            deadline_s(body, service.settings),
        )
        if isinstance(claimed, StoredOutcome):
            return Response(
                content=claimed.body,
                status_code=claimed.status,
                media_type="application/json",
                headers={REPLAYED_HEADER: "true"},
            )
        control.claim = claimed
        control.idempotency_ms = (time.perf_counter() - begin) * 1000
    try:
        response = await _run_watched(service, body, request, control)
    except Exception as error:
        if control.claim is not None:
            await _settle_failure(service, control.claim, error)
        raise
    if control.body is not None:
        return Response(content=control.body, media_type="application/json")
    return response


async def _run_watched(
    service: AuctionService, body: AuctionRequest, request: Request, control: RunControl
) -> AuctionResponse | Response:
    task = asyncio.ensure_future(service.run(body, control))
    watch = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if task.done() or control.billing_started:
        return await task  # finished, or past the billing write: the auction stands
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    if task.cancelled() or not control.billing_started:
        metrics: GatewayMetrics = request.app.state.metrics
        metrics.auctions.labels("abandoned", body.proposal).inc()
        logger.info("auction abandoned: the client disconnected before billing (nothing billed)")
        if control.claim is not None:
            with contextlib.suppress(RedisError, OSError):
                await service.idempotency.release(control.claim)
        return Response(status_code=CLIENT_CLOSED_STATUS)
    return await task  # pragma: no cover - the write began as it was cancelled: it stands


async def _settle_failure(service: AuctionService, claim: IdempotencyClaim, error: Exception) -> None:
    """A 5xx after the claim is the key's outcome; a 4xx (refused) and a lost key store nothing."""
    status, answer = fault_answer(error)
    with contextlib.suppress(RedisError, OSError):
        if isinstance(error, IdempotencyLostError) or status < 500:
            await service.idempotency.release(claim)
        else:
            stored = JSONResponse(status_code=status, content=answer).body  # the handlers' bytes
            await service.idempotency.store_failure(claim, status, bytes(stored).decode())
