"""One `POST /auction` call around the auction: Idempotency-Key replay, abandonment, stored outcome.

Job: `serve_auction` (the route hands it the validated body, the caller, the key, the service,
admission and metrics it got as dependencies and the auction's model-token cost) 1. with a key,
checks it before any model work (a read, sent beside the auction's tokenization; generation waits
for its verdict, `RunControl.cleared`: the stored outcome is answered with `Idempotent-Replayed:
true`, nothing billed; 409 while it runs; 422 reused with other parameters; the auction is then
cancelled before generating anything), and claims it (SET NX, sent as the auction begins: its fsync
overlaps the work; lost → the auction is cancelled, 409); 2. runs the auction as a task beside a
watch of the client's connection: a client that disconnects before the billing write cancels the
task (its worker requests with it), nothing is billed or stored, the key is given back,
`mosaic_auctions_total{outcome="abandoned"}`; after the billing write the auction stands
(retrievable by id and by its key); 3. stores a 5xx that happened after the claim under the key
(`app.gateway.errors.fault_answer`: the same answer as the handlers), and gives the key back after a
4xx (refused: not stored). Admission control (`app.auction.admission`) comes before the claim; when
no place is free at once the replay check is awaited first (a replay never waits for a place); the
admitted auction's worker requests carry the priority admission gives it (`auction_priority`).
Imports the auction service and its admission, the ledger's idempotency store, the API's models
(`app.contract`), the gateway's errors and metrics (the layout: docs/DESIGN.md § Layout).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from app.auction.admission import AdmissionController
from app.auction.run_control import RunControl, deadline_s
from app.auction.service import AuctionService
from app.auction.worker_dispatch import auction_priority
from app.campaigns.participants import Participants
from app.contract.request import AuctionRequest
from app.contract.result import AuctionResponse
from app.gateway.errors import fault_answer
from app.gateway.metrics import GatewayMetrics
from app.gateway.security import Principal
from app.ledger.idempotency import (
    REPLAYED_HEADER,
    IdempotencyClaim,
    IdempotencyLostError,
    StoredOutcome,
    fingerprint,
    running_value,
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
    body: AuctionRequest,
    request: Request,
    principal: Principal,
    idempotency_key: str | None,
    *,
    service: AuctionService,
    admission: AdmissionController,
    metrics: GatewayMetrics,
    cost: int,
    participants: Participants | None = None,
) -> AuctionResponse | Response:
    control = RunControl()
    lookup: asyncio.Future[StoredOutcome | None] | None = None
    lookup_ms = 0.0
    fp = running = ""
    if idempotency_key is not None:
        begin = time.perf_counter()
        fp = fingerprint(body.model_dump(mode="json"))
        running = running_value(fp)
        # The replay check (a read) is sent with the auction's tokenization; generation waits for it.
        lookup = asyncio.ensure_future(
            service.idempotency.lookup(principal.key_id, idempotency_key, fp, own=running)
        )
        if not admission.admits_now(principal.key_id, cost):
            stored = await lookup  # a replay never waits for, nor takes, an admission place
            if stored is not None:
                return _replay(stored)
        lookup_ms = (time.perf_counter() - begin) * 1000
    # Admission before the claim and any model work: a refusal (429) stores nothing under the key
    # and bills nothing. (With a place free at once, nothing awaits between the check and the take.)
    try:
        async with admission.admit(principal.key_id, cost) as priority:
            if idempotency_key is not None and lookup is not None:
                begin = time.perf_counter()
                control.cleared = _cleared_by(lookup)
                control.claim_ready = asyncio.ensure_future(
                    service.idempotency.claim(
                        principal.key_id, idempotency_key, fp, deadline_s(body, service.settings), running
                    )
                )
                control.idempotency_ms = lookup_ms + (time.perf_counter() - begin) * 1000
            try:
                with auction_priority(priority):  # its worker requests' order inside the workers
                    response = await _run_watched(
                        service, body, request, metrics, control, lookup, participants
                    )
            except Exception as error:
                claim = await _claim_taken(control)
                if claim is not None:
                    await _settle_failure(service, claim, error)
                raise
    finally:
        if lookup is not None and not lookup.done():
            lookup.cancel()
    if control.body is not None and not isinstance(response, Response):  # not the abandoned 499
        return Response(content=control.body, media_type="application/json")
    return response


def _replay(stored: StoredOutcome) -> Response:
    return Response(
        content=stored.body,
        status_code=stored.status,
        media_type="application/json",
        headers={REPLAYED_HEADER: "true"},
    )


def _cleared_by(lookup: asyncio.Future[StoredOutcome | None]) -> asyncio.Future[None]:
    """Done when the replay check finds the key free; never otherwise (the auction is then cancelled)."""
    cleared: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def judge(done: asyncio.Future[StoredOutcome | None]) -> None:
        if not done.cancelled() and done.exception() is None and done.result() is None:
            cleared.set_result(None)

    lookup.add_done_callback(judge)
    return cleared


async def _claim_taken(control: RunControl) -> IdempotencyClaim | None:
    """This request's claim if it got one (waiting for the SET NX if it is still under way)."""
    if control.claim is None and control.claim_ready is not None:
        with contextlib.suppress(Exception):
            control.claim = await control.claim_ready
    return control.claim


async def _run_watched(
    service: AuctionService,
    body: AuctionRequest,
    request: Request,
    metrics: GatewayMetrics,
    control: RunControl,
    lookup: asyncio.Future[StoredOutcome | None] | None = None,
    participants: Participants | None = None,
) -> AuctionResponse | Response:
    task = asyncio.ensure_future(service.run(body, control, participants))
    watch = asyncio.ensure_future(_client_gone(request))
    waiting: set[asyncio.Future[Any]] = {task, watch}
    waiting.update(f for f in (control.claim_ready, lookup) if f is not None)
    try:
        while not (task.done() or watch.done()):
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            claim = control.claim_ready
            if claim is not None and claim.done() and claim.exception() is not None and lookup in waiting:
                await asyncio.wait({lookup})  # its verdict comes first
            if lookup is not None and lookup in waiting and lookup.done():
                waiting.discard(lookup)
                if lookup.cancelled() or lookup.exception() is not None or lookup.result() is not None:
                    return await _answer_lookup(service, task, control, lookup)
            if claim is not None and claim in waiting and claim.done():
                waiting.discard(claim)
                if claim.exception() is not None and not control.billing_started:
                    task.cancel()  # the key is another request's: stop the model work, answer 409
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                    raise claim.exception()  # type: ignore[misc]
    finally:
        watch.cancel()
    if task.done() or control.billing_started:
        return await task  # finished, or past the billing write: the auction stands
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    if task.cancelled() or not control.billing_started:
        metrics.auction_counted("abandoned", body.proposal)
        logger.info("auction abandoned: the client disconnected before billing (nothing billed)")
        claim_taken = await _claim_taken(control)
        if claim_taken is not None:
            with contextlib.suppress(RedisError, OSError):
                await service.idempotency.release(claim_taken)
        return Response(status_code=CLIENT_CLOSED_STATUS)
    return await task  # pragma: no cover - the write began as it was cancelled: it stands


async def _answer_lookup(
    service: AuctionService,
    task: asyncio.Future[AuctionResponse],
    control: RunControl,
    lookup: asyncio.Future[StoredOutcome | None],
) -> Response:
    """The replay check found the key taken (or failed): the auction, still before its generation
    (it waits for the check), is cancelled, a claim it took meanwhile given back, and the request
    answered as the check says: the replay, or its 409 / 422 / 5xx."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    claim = await _claim_taken(control)
    control.claim_ready, control.claim = None, None  # nothing for the caller to settle
    if claim is not None:
        with contextlib.suppress(RedisError, OSError):
            await service.idempotency.release(claim)
    stored = lookup.result()  # raises the check's own error (or CancelledError)
    assert stored is not None
    return _replay(stored)


async def _settle_failure(service: AuctionService, claim: IdempotencyClaim, error: Exception) -> None:
    """A 5xx after the claim is the key's outcome; a 4xx (refused) and a lost key store nothing."""
    status, answer = fault_answer(error)
    with contextlib.suppress(RedisError, OSError):
        if isinstance(error, IdempotencyLostError) or status < 500:
            await service.idempotency.release(claim)
        else:
            stored = JSONResponse(status_code=status, content=answer).body  # the handlers' bytes
            await service.idempotency.store_failure(claim, status, bytes(stored).decode())
