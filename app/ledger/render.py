"""Billing on render (BILLING_MODE=render): pending charges, their render, their expiry.

Job: the Redis side of a charge that waits for its ad to be shown (OpenRTB's `burl`): the producer
queues `pending_commands` in its MULTI (with the audit record), `RenderLedger.render` bills a
pending charge exactly once (one Lua script: XADD the billing event and mark it billed), and
`expire_due` (the ledger consumer calls it) marks charges past RENDER_WINDOW_S expired, never billed.
Imports app.settings and app.ledger (budget, events, frequency, keys, scripts: render.lua) only.

Campaign budgets: the pending charge keeps the event with its `campaigns`; a rendered charge's event
reaches the stream and the ledger consumer posts its reservations when it applies it; the call that
expires a charge voids them (`BudgetLedger.void_all`; if it dies first, they expire by themselves:
their expiry is RENDER_WINDOW_S + BUDGET_RESERVATION_TTL_S after the auction), and the frequency cap
slots of its `fcap` the same way (`FrequencyLedger.void_all`); the render that bills it posts them
(frequency caps count at render; the ledger consumer posts them again, idempotent).

Keys: ``mosaic:render:charge:<auction id>`` hash {state: pending|billed|expired, event: the stream
fields as JSON, deadline_ms, stream_id once billed}, kept AUDIT_TTL_S; ``mosaic:render:due`` sorted
set auction id -> deadline (pending ones only); ``mosaic:render:counts`` hash state -> count.

Invariants: a charge moves pending -> billed or pending -> expired, once, inside one script (atomic:
a SIGKILL anywhere leaves either state, never both, never two XADDs); only `billed` charges are in
the billing stream; the counts are changed in the same script as the state.
See docs/DESIGN.md § Billing (billing on render).
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from app.ledger.budget import BudgetLedger
from app.ledger.events import BillingEvent
from app.ledger.frequency import FrequencyLedger
from app.ledger.keys import KeySettings, as_str, hot_key, stream_key
from app.ledger.scripts import RENDER_SCRIPT
from app.settings import Settings

RENDER_PREFIX = "mosaic:render:"
CHARGE_PREFIX = RENDER_PREFIX + "charge:"
DUE_KEY = RENDER_PREFIX + "due"
COUNTS_KEY = RENDER_PREFIX + "counts"
STATES = ("pending", "billed", "expired")


def charge_key(auction_id: str, settings: KeySettings | None = None) -> str:
    """A charge's hash; with `settings`, named as on this deployment (the shard's tag on a cluster)."""
    return (hot_key(settings, CHARGE_PREFIX) if settings is not None else CHARGE_PREFIX) + auction_id


def due_key(settings: KeySettings) -> str:
    return hot_key(settings, DUE_KEY)


def counts_key(settings: KeySettings) -> str:
    return hot_key(settings, COUNTS_KEY)


def pending_commands(pipe: Any, event: BillingEvent, settings: Settings) -> None:
    """Queue, in the caller's MULTI, the pending charge of `event` (not in the stream, not billed)."""
    deadline_ms = event.created_at_ms + settings.render_window_s * 1000
    key = charge_key(event.auction_id, settings)
    pipe.hset(
        key,
        mapping={
            "state": "pending",
            "event": json.dumps(event.stream_fields(), sort_keys=True),
            "deadline_ms": str(deadline_ms),
        },
    )
    pipe.expire(key, settings.audit_ttl_s)
    pipe.zadd(due_key(settings), {event.auction_id: deadline_ms})
    pipe.hincrby(counts_key(settings), "pending", 1)


class RenderLedger:
    """Render, expire and read pending charges."""

    def __init__(self, redis: aioredis.Redis, settings: Settings, budget: BudgetLedger | None = None) -> None:
        self.redis = redis
        self.settings = settings
        self.budget = budget or BudgetLedger(redis, settings)
        self.frequency = FrequencyLedger(redis, settings)
        self._sha: str | None = None

    async def _transition(self, auction_id: str, action: str, now_ms: int | None) -> tuple[str, str, bool]:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        s = self.settings
        keys = [charge_key(auction_id, s), stream_key(s), due_key(s), counts_key(s)]
        for _ in range(2):
            if self._sha is None:
                self._sha = as_str(await self.redis.script_load(RENDER_SCRIPT))
            try:
                state, stream_id, changed, campaigns, fcap = await self.redis.evalsha(
                    self._sha, 4, *keys, now, action, auction_id
                )
            except NoScriptError:  # a restarted Redis forgets scripts
                self._sha = None
                continue
            if as_str(state) == "expired" and int(changed) and as_str(campaigns):
                await self.budget.void_all(list(json.loads(as_str(campaigns)).values()), auction_id, now)
            if int(changed) and as_str(fcap):
                await self._settle_slots(as_str(state), as_str(fcap), auction_id, now)
            return as_str(state), as_str(stream_id), bool(int(changed))
        raise RuntimeError("the render script could not be loaded")

    async def _settle_slots(self, state: str, fcap: str, auction_id: str, now_ms: int) -> None:
        """Frequency cap slots of a charge this call changed: billed → counted now (a failure is left to
        the ledger consumer, which posts them when it applies the event); expired → released."""
        holds = [(c, str(u), int(w)) for c, (u, w) in json.loads(fcap).items()]
        if state == "expired":
            await self.frequency.void_all([(c, u) for c, u, _ in holds], auction_id, now_ms)
        elif state == "billed":
            with contextlib.suppress(RedisError, OSError):
                await self.frequency.post_all(holds, auction_id, now_ms, now_ms)

    async def render(self, auction_id: str, now_ms: int | None = None) -> tuple[str, str, bool]:
        """Bill a pending charge (idempotent): (state after, stream id, whether this call changed it);
        state `missing` when there is no charge."""
        return await self._transition(auction_id, "render", now_ms)

    async def state(self, auction_id: str, now_ms: int | None = None) -> str | None:
        """The charge's state (a pending one past its window is expired on the way); None if none."""
        state, _, _ = await self._transition(auction_id, "expire", now_ms)
        return None if state == "missing" else state

    async def expire_due(self, now_ms: int | None = None, limit: int = 256) -> int:
        """Expire the pending charges whose window has passed; returns how many were expired."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        due = await self.redis.zrangebyscore(due_key(self.settings), "-inf", f"({now}", start=0, num=limit)
        expired = 0
        for raw in due:
            state, _, _ = await self._transition(as_str(raw), "expire", now)
            expired += state == "expired"
            if state == "missing":  # the charge's hash expired (AUDIT_TTL_S): drop the index entry
                await self.redis.zrem(due_key(self.settings), as_str(raw))
        return expired

    async def counts(self) -> dict[str, int]:
        raw = await self.redis.hgetall(counts_key(self.settings))
        counts = {as_str(k): int(as_str(v)) for k, v in (raw or {}).items()}
        return {state: counts.get(state, 0) for state in STATES}
