"""Trimming the ledger (trim.lua) against a real Redis: never a pending or undelivered entry, reconcile clean.

Short windows (AUCTION_DEADLINE_S + BILLING_APPEND_TIMEOUT_S = 1 s, BILLING_RETENTION_S = 2 s) and
real time. A consumer that died holding entries (pending, never acknowledged) pins the trim
threshold below its oldest entry; everything older goes, with its applied markers and history
entries folded into the settled totals; the balances never change; the pending entries are later
claimed and applied exactly once; a producer retry of a kept auction is still recognised as a
duplicate; reconcile is clean at every step.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import defaultdict

import pytest
import redis.asyncio as aioredis

from app.ledger.consumer import LedgerConsumer
from app.ledger.events import BillingEvent, make_billing_event
from app.ledger.keys import LedgerKeys
from app.ledger.producer import BillingProducer
from app.ledger.reconcile import reconcile
from app.ledger.trim import LedgerTrimmer
from app.settings import Settings
from tests.fixtures_redis import RedisServerProcess

pytestmark = pytest.mark.timeout(60)
KEYS = LedgerKeys.default()


def _settings(url: str) -> Settings:
    return Settings(
        redis_url=url,
        auction_deadline_s=0.5,
        billing_append_timeout_s=0.5,
        billing_retention_s=2,
        billing_trim_batch=7,
        billing_claim_idle_ms=60_000,  # the dead consumer's entries stay pending until `claimer` runs
        billing_block_ms=10,
    )


def _events(n: int, rng: random.Random, tag: str) -> list[BillingEvent]:
    advertisers = ["a", "b", "c"]
    return [
        make_billing_event(
            f"{tag}{i}",
            {adv: rng.uniform(0.0, 2.0) for adv in rng.sample(advertisers, rng.randint(1, 3))},
            "USD",
        )
        for i in range(n)
    ]


async def _append(producer: BillingProducer, events: list[BillingEvent]) -> list[str]:
    ids = []
    for event in events:
        record = {"auction_id": event.auction_id, "payments_micro": event.payments_micro}
        record["created_at_ms"] = event.created_at_ms
        ids.append(
            await producer.append(
                event, audit=(f"mosaic:auction:{event.auction_id}", json.dumps(record), 600)
            )
        )
    return ids


async def _drain(consumer: LedgerConsumer, rounds: int = 20) -> None:
    for _ in range(rounds):
        if not await consumer.process_batch():
            return


def _expected(events: list[BillingEvent]) -> dict[str, int]:
    balances: dict[str, int] = defaultdict(int)
    for event in events:
        for adv, micro in event.payments_micro.items():
            balances[f"advertiser:{adv}"] -= micro
            balances["platform:revenue"] += micro
    return dict(balances)


async def _clean(client: aioredis.Redis, settings: Settings) -> None:
    report = await reconcile(client, settings)
    assert report.ok, report.differences[:5]


def test_trim_keeps_pending_and_undelivered_entries_and_reconcile_stays_clean(
    redis_server: RedisServerProcess,
) -> None:
    settings = _settings(redis_server.url)
    rng = random.Random(15)

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        producer, trimmer = BillingProducer(client, settings), LedgerTrimmer(client, settings)
        consumer = LedgerConsumer(client, settings, "alive")
        await consumer.ensure_group()
        stream, group = settings.billing_stream, settings.billing_group
        # Nothing delivered yet: nothing may go, however old.
        old = _events(20, rng, "old")
        await _append(producer, old)
        await asyncio.sleep(2.2)
        assert (await trimmer.trim_once()).entries == 0
        await _drain(consumer)
        await asyncio.sleep(1.2)
        # A consumer that dies holding 5 entries (delivered, never acknowledged).
        held = _events(5, rng, "held")
        held_ids = await _append(producer, held)
        await client.xreadgroup(group, "dead", {stream: ">"}, count=5)
        await asyncio.sleep(1.2)  # so that only the pending floor protects them (not last-delivered)
        later = _events(6, rng, "later")
        await _append(producer, later)
        await _drain(consumer)
        await asyncio.sleep(2.2)
        result = await trimmer.trim_once()
        assert result.entries == len(old) and result.settled == len(old)  # in batches of 7
        remaining = [entry_id for entry_id, _ in await client.xrange(stream)]
        assert set(held_ids) <= set(remaining)  # every pending entry kept
        pending = await client.xpending_range(stream, group, "-", "+", 100)
        assert {row["message_id"] for row in pending} == set(held_ids)
        assert await client.hlen(KEYS.applied) == len(later)
        assert int(await client.hget(KEYS.settled, "events")) == len(old)
        balances = {k: int(v) for k, v in (await client.hgetall(KEYS.balances)).items()}
        assert balances == _expected(old + later)  # trimming never moves money
        await _clean(client, settings)
        # A producer retry of a kept auction is still a duplicate, not a second bill.
        await producer.append(later[0])
        claimer = LedgerConsumer(
            client, settings.model_copy(update={"billing_claim_idle_ms": 100}), "claimer"
        )
        await _drain(claimer)
        assert claimer.stats["duplicate"] == 1 and claimer.stats["claimed"] == len(held)
        assert await client.hlen(KEYS.applied) == len(later) + len(held)
        balances = {k: int(v) for k, v in (await client.hgetall(KEYS.balances)).items()}
        assert balances == _expected(old + later + held)
        await _clean(client, settings)
        # Past the retention the acknowledged entries go; the balances and reconcile stay.
        await asyncio.sleep(2.2)
        await trimmer.trim_once()
        # Only the last-delivered entry stays (entries within W of it are kept: the floor's margin).
        assert [entry_id for entry_id, _ in await client.xrange(stream)] == [
            (await client.xinfo_groups(stream))[0]["last-delivered-id"]
        ]
        assert await client.hlen(KEYS.applied) == 0
        assert not await client.keys(KEYS.history_prefix + "*")
        assert int(await client.hget(KEYS.settled, "events")) == len(old + later + held)
        balances = {k: int(v) for k, v in (await client.hgetall(KEYS.balances)).items()}
        assert balances == _expected(old + later + held)
        await _drain(claimer)
        assert claimer.stats["deleted"] == 0  # XAUTOCLAIM never met a trimmed pending entry
        await _clean(client, settings)
        await client.aclose()

    asyncio.run(main())


def test_retention_must_outlive_a_request() -> None:
    with pytest.raises(ValueError, match="BILLING_RETENTION_S"):
        Settings(auction_deadline_s=30, billing_append_timeout_s=2, billing_retention_s=20)
