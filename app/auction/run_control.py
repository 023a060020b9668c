"""One auction's link to its caller and its clock: `RunControl`, the deadline, the stored record's key.

Job: what the route (`app.gateway.auction_call`) and `app.auction.service` share about one run: the
control block (cancellation before billing, the Idempotency-Key's claim, work after the reply), the
auction's deadline (`tmax_ms` within AUCTION_DEADLINE_S), its clock, and where its audit record lives.
Imports the sampler's clock, the ledger's idempotency claim (a type), `app.contract` and
`app.settings`; no I/O. See docs/DESIGN.md § The path of
one auction.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from app.auction.sampler import StageClock
from app.contract.request import AuctionRequest
from app.ledger.idempotency import IdempotencyClaim
from app.ledger.keys import AUCTION_KEY_PREFIX, KeySettings, auction_record_key
from app.settings import Settings


def auction_key(auction_id: str, settings: KeySettings | None = None) -> str:
    """The audit record's key; with `settings`, as named on this deployment (a cluster's shard tag)."""
    if settings is None:
        return AUCTION_KEY_PREFIX + auction_id
    return auction_record_key(settings, auction_id)


@dataclass
class RunControl:
    """One auction's link to its caller (the route).

    `billing_started` turns true, with no await in between, just before the final write begins: a
    caller may cancel the auction (an abandoned request) only while it is false; after that the
    write runs shielded and the auction stands. With a key, `claim_ready` (sent by the caller as
    model work begins) is awaited before the write; `body` is then the exact JSON answered,
    the one stored under the Idempotency-Key in the same MULTI as the record and the billing event.
    `cleared` (with a key): generation waits for it, so the key's replay check, sent with the
    auction's tokenization, ends before any model work.
    """

    claim_ready: asyncio.Future[IdempotencyClaim] | None = None  # the key's claim, under way
    cleared: asyncio.Future[None] | None = None  # set when generation may begin (the replay check)
    claim: IdempotencyClaim | None = None
    idempotency_ms: float = 0.0
    billing_started: bool = False
    body: str | None = None


def deadline_s(request: AuctionRequest, settings: Settings) -> float:
    """This auction's deadline: its `tmax_ms`, at most AUCTION_DEADLINE_S."""
    if request.tmax_ms is None:
        return settings.auction_deadline_s
    return min(settings.auction_deadline_s, request.tmax_ms / 1000)


def clock_ms() -> int:
    return int(time.time() * 1000)


def clock_after(control: RunControl) -> StageClock:
    """The auction's clock, started when the gateway began its work (the key's claim is part of it)."""
    clock = StageClock()
    if control.idempotency_ms:
        clock.started -= control.idempotency_ms / 1000
        clock.stages_ms["idempotency"] = control.idempotency_ms
    return clock


def load_record(raw: bytes | str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    record: dict[str, Any] = json.loads(raw)
    return record
