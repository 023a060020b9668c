"""`mosaic ledger reconcile` over archived records too (issue 36).

Invariant (real Redis, real PostgreSQL, the real ledger consumer and archiver): with the archive given,
reconcile checks every audit record - those still in Redis and those archived to PostgreSQL and dropped
from Redis - against what was billed, each once: a clean ledger is clean with every record counted; an
archived record whose amounts differ from its applied event is an `audit_mismatch`, an archived served
record with no billing event `served_not_billed`, an archived test auction that was billed
`billed_unbillable`. Without the archive those archived records are not seen (the check that proves
they are read from PostgreSQL). The CLI passes the archive with ARCHIVE_DSN.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from app.archive.archiver import Archiver
from app.archive.store import ArchiveStore
from app.ledger.consumer import LedgerConsumer
from app.ledger.events import BillingEvent, make_billing_event
from app.ledger.producer import BillingProducer
from app.ledger.reconcile import reconcile
from app.settings import Settings
from tests.fixtures_redis import RedisServerProcess
from tests.integration.test_archive import opened, settings_for
from tests.integration.test_ledger import drain

pytestmark = pytest.mark.timeout(120)


def record(auction_id: str, payments: dict[str, int], created_ms: int, **extra: object) -> str:
    return json.dumps(
        {"auction_id": auction_id, "created_at_ms": created_ms, "payments_micro": payments, **extra},
        separators=(",", ":"),
    )


def test_reconcile_checks_archived_records(
    redis_server: RedisServerProcess, archive_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(redis_server, archive_dsn, tmp_path)

    async def scenario() -> None:
        async with opened(settings) as (redis, store):
            producer = BillingProducer(redis, settings)
            events = []
            for i in range(40):
                event = make_billing_event(f"r{i}", {"alice": 0.25 + i / 1000, "bob": 0.1}, "USD")
                events.append(event)
                text = record(event.auction_id, event.payments_micro, event.created_at_ms)
                await producer.record(event, (f"mosaic:auction:{event.auction_id}", text, 3600))
            consumer = LedgerConsumer(redis, settings, "c1")
            await consumer.ensure_group()
            await drain(consumer, redis, settings)
            assert await Archiver(redis, store, settings).drain() == 40
            assert not [k async for k in redis.scan_iter(match="mosaic:auction:*")]
            plain = await reconcile(redis, settings)  # Redis only: the archived records are not seen
            assert plain.ok and plain.audit_records == 0
            report = await reconcile(redis, settings, store)
            assert report.ok, report.differences
            assert (report.audit_records, report.archived_records) == (40, 40)
            await _archived_differences_are_found(redis, store, settings, events[0])

    asyncio.run(scenario())
    from typer.testing import CliRunner

    from app.cli import cli

    for name, value in (
        ("REDIS_URL", redis_server.url),
        ("ARCHIVE_DSN", archive_dsn),
        ("DATA_DIR", tmp_path),
    ):
        monkeypatch.setenv(name, str(value))
    result = CliRunner().invoke(cli, ["ledger", "reconcile"], terminal_width=200)
    assert result.exit_code == 1 and "served_not_billed" in result.output, result.output
    assert any(
        "of which archived" in line and line.rstrip(" │").endswith("42")
        for line in result.output.splitlines()
    )


async def _archived_differences_are_found(
    redis: aioredis.Redis, store: ArchiveStore, settings: Settings, first: BillingEvent
) -> None:
    """A changed amount, a served record never billed and a billed test auction, all only in PostgreSQL."""
    async with store.pool.connection() as conn:
        changed = record(first.auction_id, {**first.payments_micro, "alice": 1}, first.created_at_ms)
        await conn.execute(
            "UPDATE auction_records SET record = %s WHERE auction_id = %s", (changed, first.auction_id)
        )
    unbilled = record("ghost", {"alice": 5}, first.created_at_ms)
    await redis.set("mosaic:auction:ghost", unbilled)  # a record with no billing event, then archived
    await redis.zadd("mosaic:archive:queue", {"mosaic:auction:ghost": 0})
    test_event = make_billing_event("t0", {"alice": 0.5}, "USD")
    await BillingProducer(redis, settings).append(test_event)  # a test auction billed: never allowed
    test_text = record("t0", test_event.payments_micro, test_event.created_at_ms, billing="test", test=True)
    await redis.set("mosaic:auction:t0", test_text)
    await redis.zadd("mosaic:archive:queue", {"mosaic:auction:t0": 0})
    await Archiver(redis, store, settings).drain()
    report = await reconcile(redis, settings, store)
    kinds = {(d.kind, d.subject) for d in report.differences}
    assert ("audit_mismatch", first.auction_id) in kinds
    assert ("served_not_billed", "ghost") in kinds
    assert ("billed_unbillable", "t0") in kinds
    assert report.archived_records == 42
