"""The billing ledger against a real Redis server process: apply, duplicates, conflicts, malformed
events, redelivery after a crash between apply and XACK, NOSCRIPT, reconcile, the read API, the
embedded server. (Process kills of the consumer and of Redis: test_ledger_faults.py.)
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI

from app.gateway.ledger_routes import router
from app.ledger.commands import reconcile_command
from app.ledger.consumer import LedgerConsumer
from app.ledger.events import BillingEvent, make_billing_event
from app.ledger.keys import PLATFORM_ACCOUNT, LedgerKeys
from app.ledger.producer import BillingProducer, BillingUnavailableError
from app.ledger.reader import LedgerReader
from app.ledger.reconcile import reconcile
from app.ledger.redis_store import make_client, open_redis
from app.settings import Settings
from tests.fixtures_redis import RedisServerProcess

T = TypeVar("T")
KEYS = LedgerKeys.default()


def ledger_settings(url: str | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": url,
        "billing_block_ms": 50,
        "billing_claim_idle_ms": 100,
        "billing_max_deliveries": 3,
        "billing_batch_size": 64,
        "api_keys": [],
    }
    values.update(overrides)
    return Settings(**values)


def run_with_client(url: str, body: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
    async def main() -> T:
        client = make_client(url, ledger_settings(url))
        try:
            return await body(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


async def drain(
    consumer: LedgerConsumer, redis: aioredis.Redis, settings: Settings, timeout_s: float = 20
) -> None:
    """Process batches until every entry is delivered and acknowledged (or fail after timeout_s)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        handled = await consumer.process_batch()
        summary = await LedgerReader(redis, settings).summary()
        if handled == 0 and summary["pending"] == 0 and summary["lag"] == 0:
            return
    raise AssertionError(f"ledger did not drain: {await LedgerReader(redis, settings).summary()}")


def expected_balances(events: list[BillingEvent]) -> dict[str, int]:
    balances: dict[str, int] = defaultdict(int)
    for event in events:
        for adv, amount in event.payments_micro.items():
            balances[f"advertiser:{adv}"] -= amount
        balances[PLATFORM_ACCOUNT] += event.revenue_micro
    return dict(balances)


async def ledger_balances(redis: aioredis.Redis) -> dict[str, int]:
    raw: Any = await redis.hgetall(KEYS.balances)
    return {k: int(v) for k, v in raw.items()}


async def dead_letters(redis: aioredis.Redis, settings: Settings) -> list[dict[str, str]]:
    """The fields of every dead-letter entry, oldest first."""
    rows: Any = await redis.xrange(settings.billing_dead_letter_stream)
    return [dict(fields) for _id, fields in rows]


def random_events(n: int, seed: int, prefix: str = "auction") -> list[BillingEvent]:
    rng = random.Random(seed)
    advertisers = [f"adv-{i}" for i in range(12)]
    events = []
    for i in range(n):
        chosen = rng.sample(advertisers, rng.randint(1, 4))
        payments = {a: round(rng.uniform(0.0, 3.0), rng.choice([2, 6, 9])) for a in chosen}
        events.append(make_billing_event(f"{prefix}-{i}", payments, "USD", now_ms=1_700_000_000_000 + i))
    return events


def test_events_are_applied_once_with_double_entry(redis_server: RedisServerProcess) -> None:
    settings = ledger_settings(redis_server.url)
    events = random_events(300, seed=1)

    async def body(redis: aioredis.Redis) -> None:
        producer = BillingProducer(redis, settings)
        ids = [await producer.append(event) for event in events]
        assert len(set(ids)) == len(ids)
        # a producer retry: the same event appended again is acknowledged but not applied twice
        await producer.append(events[0])
        await producer.append(events[1])
        consumer = LedgerConsumer(redis, settings, "c1")
        await consumer.ensure_group()
        await drain(consumer, redis, settings)
        balances = await ledger_balances(redis)
        assert balances == {k: v for k, v in expected_balances(events).items() if k in balances}
        assert sum(balances.values()) == 0
        assert consumer.stats["applied"] == 300 and consumer.stats["duplicate"] == 2

        summary = await LedgerReader(redis, settings).summary()
        assert summary["events_applied"] == 300
        assert summary["duplicates"] == 2
        assert summary["stream_length"] == 302
        assert (summary["pending"], summary["lag"], summary["dead_letters"]) == (0, 0, 0)
        assert summary["revenue_micro"] == sum(e.revenue_micro for e in events)

        adv = await LedgerReader(redis, settings).advertiser("adv-3", limit=5)
        mine = [e for e in events if "adv-3" in e.payments_micro]
        assert adv["auctions"] == len(mine)
        assert adv["paid_micro"] == sum(e.payments_micro["adv-3"] for e in mine) == -adv["balance_micro"]
        assert [h["auction_id"] for h in adv["history"]] == [e.auction_id for e in reversed(mine[-5:])]
        assert adv["history"][0]["payment_micro"] == mine[-1].payments_micro["adv-3"]

        report = await reconcile(redis, settings)
        assert report.ok, report.differences
        assert report.events_applied == 300 and report.accounts_sum_micro == 0

    run_with_client(redis_server.url, body)


def test_embedded_linger_lets_the_writer_answer_first_then_applies(redis_server: RedisServerProcess) -> None:
    """The embedded consumer (linger) shares the writer's event loop: after its read wakes up it
    waits, so a coroutine that runs on right after its own XADD finishes before any apply work; the
    event is applied once all the same, and left pending (redeliverable) during the wait."""
    settings = ledger_settings(redis_server.url, billing_block_ms=5000)
    event = random_events(1, seed=7, prefix="linger")[0]

    async def body(redis: aioredis.Redis) -> None:
        consumer = LedgerConsumer(redis, settings, "embedded", linger_s=0.3)
        await consumer.ensure_group()
        batch = asyncio.create_task(consumer.process_batch())
        await asyncio.sleep(0.05)  # the consumer is now blocked in XREADGROUP
        await BillingProducer(redis, settings).append(event)
        appended = time.monotonic()
        await asyncio.sleep(0.1)  # the writer's own work after its XADD, inside the linger
        assert not batch.done()
        summary = await LedgerReader(redis, settings).summary()
        assert (summary["events_applied"], summary["pending"]) == (0, 1)
        assert await batch == 1
        assert time.monotonic() - appended >= 0.3 - 0.02
        assert consumer.stats["applied"] == 1
        assert (await LedgerReader(redis, settings).summary())["pending"] == 0

    run_with_client(redis_server.url, body)


def test_conflicting_duplicate_is_dead_lettered_not_applied(redis_server: RedisServerProcess) -> None:
    settings = ledger_settings(redis_server.url)
    first = make_billing_event("dup-1", {"a": 1.0, "b": 2.0}, "USD", now_ms=1)
    other = make_billing_event("dup-1", {"a": 5.0}, "USD", now_ms=1)

    async def body(redis: aioredis.Redis) -> None:
        producer = BillingProducer(redis, settings)
        await producer.append(first)
        conflict_id = await producer.append(other)
        consumer = LedgerConsumer(redis, settings, "c1")
        await drain(consumer, redis, settings)
        assert await ledger_balances(redis) == expected_balances([first])
        (fields,) = await dead_letters(redis, settings)
        assert fields["kind"] == "conflict" and fields["stream_id"] == conflict_id
        assert "different payload" in fields["reason"] and fields["auction_id"] == "dup-1"
        assert json.loads(fields["event"])["payments"] == '{"a":5000000}'
        summary = await LedgerReader(redis, settings).summary()
        assert (summary["conflicts"], summary["dead_letters"], summary["events_applied"]) == (1, 1, 1)
        assert (await reconcile(redis, settings)).ok

    run_with_client(redis_server.url, body)


MALFORMED: list[tuple[dict[Any, Any], str]] = [
    ({"auction_id": "m1"}, "missing field"),
    (
        {
            "v": "1",
            "auction_id": "m2",
            "created_at_ms": "1",
            "currency": "USD",
            "revenue_micro": "3",
            "payments": "{",
        },
        "not JSON",
    ),
    (
        {"v": "1", "auction_id": "m3", "created_at_ms": "1", "currency": "USD", "revenue_micro": "3"}
        | {"payments": '{"a":1,"b":1}'},
        "not the sum",
    ),
    (
        {"v": "1", "auction_id": "m4", "created_at_ms": "1", "currency": "EUR", "revenue_micro": "1"}
        | {"payments": '{"a":1}'},
        "currency EUR",
    ),
    (
        {"v": "1", "auction_id": "m5", "created_at_ms": "1", "currency": "USD", "revenue_micro": "1"}
        | {"payments": '{"a":1.0}'},
        "not an integer",
    ),
    (
        {
            "v": "1",
            "auction_id": "m6",
            "created_at_ms": "1",
            "currency": "USD",
            "revenue_micro": "99999999999999999",
        }
        | {"payments": '{"a":99999999999999999}'},
        "not an integer",
    ),
]


def test_malformed_events_are_dead_lettered_after_max_deliveries(redis_server: RedisServerProcess) -> None:
    settings = ledger_settings(redis_server.url, billing_max_deliveries=3)
    good = make_billing_event("good-1", {"a": 0.5}, "USD", now_ms=1)

    async def body(redis: aioredis.Redis) -> None:
        bad_ids = [str(await redis.xadd(settings.billing_stream, fields)) for fields, _ in MALFORMED]
        await BillingProducer(redis, settings).append(good)
        consumer = LedgerConsumer(redis, settings, "c1")
        await consumer.process_batch()
        assert await redis.xlen(settings.billing_dead_letter_stream) == 0  # first delivery: retried later
        deadline = time.monotonic() + 10
        while await redis.xlen(settings.billing_dead_letter_stream) < len(MALFORMED):
            assert time.monotonic() < deadline, await dead_letters(redis, settings)
            await asyncio.sleep(0.11)  # > billing_claim_idle_ms: XAUTOCLAIM delivers them again
            await consumer.process_batch()
        dead = {f["stream_id"]: f for f in await dead_letters(redis, settings)}
        for stream_id, (_fields, reason) in zip(bad_ids, MALFORMED, strict=True):
            assert reason in dead[stream_id]["reason"], dead[stream_id]
            assert dead[stream_id]["kind"] == "malformed"
            assert int(dead[stream_id]["deliveries"]) == settings.billing_max_deliveries
        await drain(consumer, redis, settings)
        assert await ledger_balances(redis) == expected_balances([good])
        summary = await LedgerReader(redis, settings).summary()
        assert (summary["dead_letters"], summary["pending"], summary["events_applied"]) == (
            len(MALFORMED),
            0,
            1,
        )
        assert (await reconcile(redis, settings)).ok

    run_with_client(redis_server.url, body)


def test_entries_that_are_not_utf8_are_dead_lettered(redis_server: RedisServerProcess) -> None:
    settings = ledger_settings(redis_server.url, billing_max_deliveries=1)
    good = make_billing_event("good-2", {"a": 0.5}, "USD", now_ms=1)
    raw_fields = {b"v": b"1", b"auction_id": b"bad-\xff", b"created_at_ms": b"1", b"currency": b"USD"}
    raw_fields |= {b"revenue_micro": b"1", b"payments": b'{"a\xfe":1}'}

    async def body(redis: aioredis.Redis) -> None:
        raw_client = aioredis.Redis.from_url(redis_server.url)  # bytes in, bytes out
        try:
            added: Any = await raw_client.xadd(settings.billing_stream, raw_fields)  # type: ignore[arg-type]
            bad_id = added.decode()
            await BillingProducer(redis, settings).append(good)
            await drain(LedgerConsumer(redis, settings, "c1"), redis, settings)
            (dead,) = await dead_letters(redis, settings)
            assert dead["stream_id"] == bad_id and "not UTF-8" in dead["reason"]
            raw_dead: Any = await raw_client.xrange(settings.billing_dead_letter_stream)
            assert b"bad-\xff" in raw_dead[0][1][b"event"]  # the original bytes are kept
        finally:
            await raw_client.aclose()
        assert await ledger_balances(redis) == expected_balances([good])
        assert (await reconcile(redis, settings)).ok

    run_with_client(redis_server.url, body)


def test_script_checks_key_types_before_its_first_write(redis_server: RedisServerProcess) -> None:
    settings = ledger_settings(redis_server.url, billing_max_deliveries=1)
    event = make_billing_event("wt-1", {"x": 1.0, "y": 2.0}, "USD", now_ms=1)

    async def body(redis: aioredis.Redis) -> None:
        await redis.set(KEYS.history("y"), "not a list")
        await BillingProducer(redis, settings).append(event)
        await drain(LedgerConsumer(redis, settings, "c1"), redis, settings)
        (dead,) = await dead_letters(redis, settings)
        assert "holds a string" in dead["reason"]
        # nothing of the event was written: no marker, no balance, no history of x
        assert await redis.hlen(KEYS.applied) == 0
        assert await ledger_balances(redis) == {}
        assert await redis.llen(KEYS.history("x")) == 0

    run_with_client(redis_server.url, body)


def test_pending_entry_deleted_from_the_stream_is_dead_lettered(redis_server: RedisServerProcess) -> None:
    """Never trim or XDEL pending entries; if it happens anyway, the loss is recorded, not silent."""
    settings = ledger_settings(redis_server.url)
    events = random_events(3, seed=5)

    async def body(redis: aioredis.Redis) -> None:
        producer = BillingProducer(redis, settings)
        ids = [await producer.append(event) for event in events]
        consumer = LedgerConsumer(redis, settings, "survivor")
        await consumer.ensure_group()
        # a consumer that read the entries and died; then someone deletes one of them
        await redis.xreadgroup(settings.billing_group, "ghost", {settings.billing_stream: ">"}, count=10)
        await redis.xdel(settings.billing_stream, ids[1])
        await asyncio.sleep(0.15)
        await drain(consumer, redis, settings)
        (dead,) = await dead_letters(redis, settings)
        assert (dead["stream_id"], dead["kind"]) == (ids[1], "deleted")
        assert await ledger_balances(redis) == expected_balances([events[0], events[2]])
        summary = await LedgerReader(redis, settings).summary()
        assert (summary["pending"], summary["dead_letters"], summary["events_applied"]) == (0, 1, 2)
        assert (await reconcile(redis, settings)).ok

    run_with_client(redis_server.url, body)


def test_reconcile_command_prints_a_table_and_exits_1_on_a_difference(
    redis_server: RedisServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = ledger_settings(redis_server.url)

    async def body(redis: aioredis.Redis) -> None:
        await BillingProducer(redis, settings).append(make_billing_event("r1", {"a": 1.0}, "USD"))
        await drain(LedgerConsumer(redis, settings, "c1"), redis, settings)

    run_with_client(redis_server.url, body)
    assert reconcile_command(settings) == 0
    out = capsys.readouterr().out
    assert "events applied" in out and "OK" in out

    async def tamper(redis: aioredis.Redis) -> None:
        await redis.hincrby(KEYS.balances, "platform:revenue", 1)

    run_with_client(redis_server.url, tamper)
    assert reconcile_command(settings) == 1
    out = capsys.readouterr().out
    assert "platform:revenue" in out and "DIFFERENCES" in out


def test_crash_between_apply_and_ack_is_redelivered_not_reapplied(redis_server: RedisServerProcess) -> None:
    """A consumer is cancelled in its fault-injection pause (applied, not acked); another one claims
    the entries through XAUTOCLAIM and finds them already applied."""
    slow = ledger_settings(redis_server.url, billing_fault_pause_before_ack_s=5.0, billing_batch_size=40)
    fast = ledger_settings(redis_server.url)
    events = random_events(40, seed=2)

    async def body(redis: aioredis.Redis) -> None:
        producer = BillingProducer(redis, fast)
        for event in events:
            await producer.append(event)
        victim = LedgerConsumer(redis, slow, "victim")
        task = asyncio.create_task(victim.process_batch())
        while await redis.hlen(KEYS.applied) < 40:
            await asyncio.sleep(0.01)
        task.cancel()
        assert (await LedgerReader(redis, fast).summary())["pending"] == 40  # applied, never acked
        await asyncio.sleep(0.15)
        rescuer = LedgerConsumer(redis, fast, "rescuer")
        await drain(rescuer, redis, fast)
        assert rescuer.stats["redelivered"] == 40 and rescuer.stats["claimed"] == 40
        assert rescuer.stats["applied"] == 0
        assert await ledger_balances(redis) == expected_balances(events)
        assert (await reconcile(redis, fast)).ok

    run_with_client(redis_server.url, body)


def test_noscript_after_script_flush_is_handled(redis_server: RedisServerProcess) -> None:
    settings = ledger_settings(redis_server.url)
    events = random_events(20, seed=3)

    async def body(redis: aioredis.Redis) -> None:
        producer = BillingProducer(redis, settings)
        consumer = LedgerConsumer(redis, settings, "c1")
        await consumer.ensure_group()
        for event in events[:10]:
            await producer.append(event)
        await drain(consumer, redis, settings)
        await redis.script_flush()
        for event in events[10:]:
            await producer.append(event)
        await drain(consumer, redis, settings)
        assert await ledger_balances(redis) == expected_balances(events)

    run_with_client(redis_server.url, body)


def test_reconcile_reports_tampering_and_unbilled_audit_records(redis_server: RedisServerProcess) -> None:
    settings = ledger_settings(redis_server.url)
    billed = make_billing_event("aud1", {"a": 1.25}, "USD", now_ms=1)

    async def body(redis: aioredis.Redis) -> None:
        record = json.dumps({"auction_id": "aud1", "payments_micro": billed.payments_micro})
        await BillingProducer(redis, settings).append(billed, audit=("mosaic:auction:aud1", record, 60))
        assert await redis.ttl("mosaic:auction:aud1") > 0
        await drain(LedgerConsumer(redis, settings, "c1"), redis, settings)
        report = await reconcile(redis, settings)
        assert report.ok and report.audit_records == 1
        # a served auction whose event never reached the ledger, and a hand-edited balance
        await redis.set("mosaic:auction:lost1", json.dumps({"auction_id": "lost1", "payments": {"a": 2.0}}))
        await redis.hincrby(KEYS.balances, "advertiser:a", 7)
        report = await reconcile(redis, settings)
        kinds = sorted(d.kind for d in report.differences)
        assert kinds == ["accounts_sum", "balance", "served_not_billed"], report.differences
        assert not report.ok

    run_with_client(redis_server.url, body)


def test_producer_fails_fast_when_redis_is_down(redis_server: RedisServerProcess, tmp_path: Path) -> None:
    settings = ledger_settings(redis_server.url, billing_append_timeout_s=1.0)
    event = make_billing_event("down-1", {"a": 1.0}, "USD", now_ms=1)

    async def main() -> None:
        handle = await open_redis(settings)
        try:
            producer = BillingProducer(handle.client, settings)
            await producer.append(event)
            redis_server.kill()
            started = time.monotonic()
            with pytest.raises(BillingUnavailableError, match="ConnectionError"):
                await producer.append(event)
            assert time.monotonic() - started < 1.0
        finally:
            await handle.close()

    asyncio.run(main())


def test_embedded_server_is_started_with_aof_and_shared(tmp_path: Path) -> None:
    settings = ledger_settings(None, data_dir=tmp_path / "data", redis_appendfsync="always")

    async def main() -> None:
        first = await open_redis(settings)
        try:
            assert first.embedded is not None and first.url.startswith("unix://")
            config = await first.client.config_get("append*")
            assert config["appendonly"] == "yes" and config["appendfsync"] == "always"
            second = await open_redis(settings)  # e.g. `mosaic ledger consume` with the same DATA_DIR
            assert second.embedded is None and second.url == first.url
            await BillingProducer(second.client, settings).append(make_billing_event("e1", {"a": 1}, "USD"))
            await second.close()
            assert await first.client.xlen(settings.billing_stream) == 1
        finally:
            await first.close()
        assert (tmp_path / "data" / "appendonly.aof").stat().st_size > 0
        again = await open_redis(settings)  # restarted from its AOF
        try:
            assert await again.client.xlen(settings.billing_stream) == 1
        finally:
            await again.close()

    asyncio.run(main())


def test_ledger_routes(redis_server: RedisServerProcess) -> None:
    settings = ledger_settings(redis_server.url, api_keys=["k1"])
    events = random_events(10, seed=4)

    async def main() -> None:
        redis = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        app = FastAPI()
        app.include_router(router)
        app.state.redis, app.state.settings = redis, settings
        try:
            producer = BillingProducer(redis, settings)
            for event in events:
                await producer.append(event)
            await drain(LedgerConsumer(redis, settings, "c1"), redis, settings)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                assert (await http.get("/ledger/summary")).status_code == 401
                auth = {"Authorization": "Bearer k1"}
                summary = (await http.get("/ledger/summary", headers=auth)).json()
                assert summary["events_applied"] == 10 and summary["pending"] == 0
                assert summary["revenue"] == f"{sum(e.revenue_micro for e in events) / 1e6:.6f}"
                body = (await http.get("/ledger/advertisers/adv-1?limit=2", headers=auth)).json()
                assert body["auctions"] == sum("adv-1" in e.payments_micro for e in events)
                assert len(body["history"]) == min(2, body["auctions"])
                unknown = (await http.get("/ledger/advertisers/nobody", headers=auth)).json()
                assert (unknown["auctions"], unknown["balance_micro"], unknown["history"]) == (0, 0, [])
                too_long = await http.get("/ledger/advertisers/" + "x" * 300, headers=auth)
                assert too_long.status_code == 422
                assert (await http.get("/ledger/advertisers/a?limit=0", headers=auth)).status_code == 422
        finally:
            await redis.aclose()

    asyncio.run(main())


def test_reconcile_names_each_stream_difference(redis_server: RedisServerProcess) -> None:
    """The stream checks: an acknowledged entry that was never applied, an applied event recorded under
    another entry (an unrecorded duplicate), and an applied event whose entry left the stream."""
    settings = ledger_settings(redis_server.url)
    keys = LedgerKeys.default()

    async def body(redis: aioredis.Redis) -> None:
        producer = BillingProducer(redis, settings)
        ids = [await producer.append(make_billing_event(f"s{i}", {"a": 1.0}, "USD")) for i in range(4)]
        await drain(LedgerConsumer(redis, settings, "c1"), redis, settings)
        assert (await reconcile(redis, settings)).ok
        await redis.hdel(keys.applied, "s0")  # entry ids[0]: acknowledged, never applied
        record = json.loads(await redis.hget(keys.applied, "s1"))
        await redis.hset(keys.applied, "s1", json.dumps({**record, "s": ids[3]}))  # s1 applied as ids[3]
        await redis.xdel(settings.billing_stream, ids[2])  # s2's entry, newer than the first, gone
        kinds = {(d.kind, d.subject) for d in (await reconcile(redis, settings)).differences}
        assert {("unapplied_event", ids[0]), ("unrecorded_duplicate", ids[1])} <= kinds
        assert ("applied_not_in_stream", "s2") in kinds

    run_with_client(redis_server.url, body)
