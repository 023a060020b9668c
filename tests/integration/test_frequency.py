"""Frequency caps (app.ledger.frequency, frequency.lua) against a real Redis server process: two-phase
reserve / post / void / expiry per (campaign, user), idempotent and late posts, the window sliding,
many concurrent reservers, the ledger consumer's post of an event's `fcap`, render expiry and render.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from app.ledger.consumer import LedgerConsumer
from app.ledger.events import MalformedEventError, make_billing_event, parse_entry
from app.ledger.frequency import FrequencyHold, FrequencyLedger, fcap_key, keep_ms, user_hash
from app.ledger.redis_store import make_client
from app.ledger.render import RenderLedger, pending_commands
from tests.fixtures_redis import RedisServerProcess
from tests.integration.test_ledger import drain, ledger_settings

NOW = 1_772_323_200_000
USER = user_hash("user-1")
HOLD = FrequencyHold("c1", USER, max_auctions=2, per_seconds=60)


def run(url: str, body: Any, **overrides: Any) -> Any:
    async def main() -> Any:
        settings = ledger_settings(url, **overrides)
        client = make_client(url, settings)
        try:
            return await body(client, FrequencyLedger(client, settings))
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_reserve_post_void_and_expiry(redis_server: RedisServerProcess) -> None:
    """Invariant: a slot is reserved only while posted-in-window + live reservations < max_auctions;
    a void frees it at once, an unposted one frees itself at its expiry, a posted one when it leaves
    the window; the key is the campaign's hash tag + the user's SHA-256 (never the id itself)."""

    async def body(r: aioredis.Redis, f: FrequencyLedger) -> None:
        assert await f.reserve(HOLD, "a1", NOW, 10_000)
        assert await f.reserve(HOLD, "a1", NOW, 10_000)  # the same auction again: still its one slot
        assert await f.reserve(HOLD, "a2", NOW, 10_000)
        assert not await f.reserve(HOLD, "a3", NOW, 10_000)  # 2 pending: capped
        assert await f.void(HOLD, "a2", NOW) == "voided"
        assert await f.void(HOLD, "a2", NOW) == "unknown"  # idempotent
        assert await f.reserve(HOLD, "a3", NOW, 10_000)
        assert await f.post(HOLD, "a1", NOW + 1, NOW) == "posted"
        assert await f.post(HOLD, "a1", NOW + 2, NOW) == "already_posted"
        assert await f.void(HOLD, "a1", NOW + 3) == "posted"  # a void after the post changes nothing
        assert (await f.count(HOLD, NOW + 4)).posted == 1
        assert not await f.reserve(HOLD, "a4", NOW + 5, 10_000)
        # a3 expires unposted at NOW + 10 s: its slot comes back by itself
        assert await f.reserve(HOLD, "a4", NOW + 10_001, 10_000)
        assert not await f.reserve(HOLD, "a5", NOW + 10_002, 10_000)
        # a1 (posted at NOW + 1) leaves the 60 s window, a4 expired at NOW + 20 s: both slots free
        assert await f.reserve(HOLD, "a5", NOW + 60_002, 100_000)
        assert await f.reserve(HOLD, "a6", NOW + 60_002, 100_000)
        counted = await f.count(HOLD, NOW + 60_003)
        assert (counted.posted, counted.pending) == (0, 2)
        key = fcap_key("c1", USER)
        assert key == f"mosaic:fcap:{{c1}}:{USER}" and "user-1" not in key and len(USER) == 64
        assert await r.pttl(key) > 0  # expires by itself

    run(redis_server.url, body)


def test_late_post_counts_and_a_stale_repost_does_not(redis_server: RedisServerProcess) -> None:
    """Invariant: a post after the reservation expired or was voided still counts (the reply was shown:
    `late`); a post repeated after the posted auction left the window and keep_ms counts nothing
    (`stale`), so a ledger consumer's redelivery never counts an auction twice."""

    async def body(r: aioredis.Redis, f: FrequencyLedger) -> None:
        keep = keep_ms(f.settings, HOLD.per_seconds)
        assert await f.reserve(HOLD, "b1", NOW, 1_000)
        assert await f.post(HOLD, "b1", NOW + 5_000, NOW) == "late"  # expired at NOW + 1 s: counted
        assert (await f.count(HOLD, NOW + 5_001)).posted == 1
        later = NOW + 5_000 + keep + 1
        assert await f.post(HOLD, "b1", later, NOW) == "stale"
        assert (await f.count(HOLD, later)).posted == 0

    run(redis_server.url, body)


def test_concurrent_reservers_get_exactly_the_cap(redis_server: RedisServerProcess) -> None:
    """Invariant: hard under concurrency: 200 auctions reserving at once on 8 connections get exactly
    max_auctions slots (the check and the write are one script), and once those are posted no further
    reservation succeeds within the window."""
    hold = FrequencyHold("hot", USER, max_auctions=3, per_seconds=3600)

    async def body(r: aioredis.Redis, f: FrequencyLedger) -> None:
        clients = [make_client(redis_server.url, f.settings) for _ in range(8)]
        ledgers = [FrequencyLedger(c, f.settings) for c in clients]
        now = int(time.time() * 1000)
        try:
            results = await asyncio.gather(
                *(ledgers[i % 8].reserve(hold, f"x{i}", now, 60_000) for i in range(200))
            )
            winners = [f"x{i}" for i, ok in enumerate(results) if ok]
            assert len(winners) == 3
            for auction_id in winners:
                assert await f.post(hold, auction_id, now + 1, now) == "posted"
            again = await asyncio.gather(
                *(ledgers[i % 8].reserve(hold, f"y{i}", now + 2, 60_000) for i in range(50))
            )
            assert not any(again)
        finally:
            for c in clients:
                await c.aclose()

    run(redis_server.url, body)


def test_event_fcap_round_trips_and_is_checked() -> None:
    """Invariant: an event's `fcap` names only campaigns of the event, each with a SHA-256 user hash and
    a window; anything else is a malformed entry (dead-lettered, never half-applied)."""
    event = make_billing_event("e1", {"o1": 0.5}, "USD", campaigns={"o1": "c1"}, fcap={"c1": (USER, 60)})
    fields = event.stream_fields()
    assert parse_entry("1-0", fields).fcap_holds() == [("c1", USER, 60)]
    bad_holds = [{"c9": [USER, 60]}, {"c1": ["user-1", 60]}, {"c1": [USER, 0]}, {"c1": [USER, 1.5]}, []]
    for bad in map(json.dumps, bad_holds):
        with pytest.raises(MalformedEventError):
            parse_entry("1-0", {**fields, "fcap": bad})
    assert "fcap" not in make_billing_event("e2", {"o1": 0.5}, "USD", campaigns={"o1": "c1"}).stream_fields()


def test_ledger_consumer_posts_the_events_slots(redis_server: RedisServerProcess) -> None:
    """Invariant: the ledger consumer posts the cap slots of every event it applies (the fallback when a
    gateway died between its billing write and its own post), once however often it is redelivered."""
    settings = ledger_settings(redis_server.url)

    async def body(r: aioredis.Redis, f: FrequencyLedger) -> None:
        now = int(time.time() * 1000)
        assert await f.reserve(HOLD, "k1", now, 60_000)
        event = make_billing_event("k1", {"o1": 0.25}, "USD", campaigns={"o1": "c1"}, fcap={"c1": (USER, 60)})
        await r.xadd(settings.billing_stream, dict(event.stream_fields()))  # type: ignore[arg-type]
        consumer = LedgerConsumer(r, settings, "c")
        await drain(consumer, r, settings)
        assert consumer.stats["fcap_posted"] == 1
        assert (await f.count(HOLD, int(time.time() * 1000))).posted == 1
        assert await f.post(HOLD, "k1", int(time.time() * 1000), now) == "already_posted"

    run(redis_server.url, body)


def test_render_bills_or_expiry_voids_the_slots(redis_server: RedisServerProcess) -> None:
    """Invariant: render mode counts a cap when the reply is rendered (the render posts the slot), and
    a charge that expires unrendered releases it at once."""
    settings = ledger_settings(redis_server.url, billing_mode="render", render_window_s=1)

    async def body(r: aioredis.Redis, f: FrequencyLedger) -> None:
        now = int(time.time() * 1000)
        render = RenderLedger(r, settings)
        for auction_id in ("r1", "r2"):
            assert await f.reserve(HOLD, auction_id, now, 60_000)
            event = make_billing_event(
                auction_id, {"o1": 0.25}, "USD", now_ms=now, campaigns={"o1": "c1"}, fcap={"c1": (USER, 60)}
            )
            pipe = r.pipeline(transaction=True)
            pending_commands(pipe, event, settings)
            await pipe.execute()
        assert (await f.count(HOLD, now)).pending == 2
        assert (await render.render("r1", now + 10))[0] == "billed"
        assert await render.expire_due(now + 1_001) == 1  # r2: not rendered within the window
        counted = await f.count(HOLD, now + 1_002)
        assert (counted.posted, counted.pending) == (1, 0)

    run(redis_server.url, body, billing_mode="render", render_window_s=1)
