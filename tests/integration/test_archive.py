"""The audit archive on a real Redis and a real PostgreSQL (app.archive).

Invariants: the migrations apply once (a second `migrate` applies nothing) and make a table
partitioned by range on created_at; with ARCHIVE_DSN every final write of the producer (unkeyed bill,
keyed bill script, pending, none) queues its record's key in that same write, and without it nothing
is queued (today's behaviour); the archiver stores each queued record's exact text in its day's
partition, and only then removes it and its queue entry from Redis; a record already archived (a
pass after a commit whose drop never ran) is stored once; a queued key whose record expired is
dropped from the queue and counted; the reader answers the same text from Redis and, once archived,
from PostgreSQL; reads by advertiser use the advertiser ids; retention drops whole old partitions
and keeps the recent ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis

from app.archive.archiver import Archiver
from app.archive.reader import RecordReader
from app.archive.schema import drop_before, migrate, partitions
from app.archive.store import ArchiveStore, archived_record
from app.ledger.events import make_billing_event
from app.ledger.idempotency import IdempotencyClaim, IdempotencyWrite
from app.ledger.keys import ARCHIVE_QUEUE_KEY
from app.ledger.producer import BillingProducer
from app.settings import Settings
from tests.fixtures_redis import RedisServerProcess

DAY_MS = 86_400_000


def record_json(auction_id: str, created_at_ms: int, advertisers: tuple[str, ...] = ("alice", "bob")) -> str:
    return json.dumps(
        {
            "auction_id": auction_id,
            "created_at_ms": created_at_ms,
            "advertisers": [{"id": a, "value_scale": 1.0} for a in advertisers],
            "revenue": 0.25,
            "note": "é ünïcode, 1e-07",
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


def settings_for(redis: RedisServerProcess, dsn: str, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"redis_url": redis.url, "data_dir": tmp_path, "archive_dsn": dsn}
    values.update(overrides)
    return Settings(**values)


async def migrated(dsn: str) -> list[str]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        return await migrate(conn)


async def open_all(settings: Settings) -> tuple[aioredis.Redis, ArchiveStore]:
    await migrated(settings.archive_dsn)
    store = ArchiveStore(settings.archive_dsn)
    await store.open()
    return aioredis.Redis.from_url(settings.redis_url), store


@contextlib.asynccontextmanager
async def opened(settings: Settings) -> AsyncIterator[tuple[aioredis.Redis, ArchiveStore]]:
    """Redis and the migrated archive for one test body, closed after it."""
    redis, store = await open_all(settings)
    try:
        yield redis, store
    finally:
        await redis.aclose()
        await store.close()


async def write_four_ways(producer: BillingProducer, redis: aioredis.Redis, now_ms: int) -> list[str]:
    """One final write of each kind; returns their auction ids."""
    ids = ["unkeyed", "keyed", "pending", "none"]
    for auction_id in ids:
        event = make_billing_event(auction_id, {"alice": 0.1}, "USD", now_ms=now_ms)
        audit = (f"mosaic:auction:{auction_id}", record_json(auction_id, now_ms), 3600)
        if auction_id == "unkeyed":
            await producer.record(event, audit)
            continue
        claim = IdempotencyClaim(f"mosaic:idem:k:{auction_id}", "running-1", "fp")
        await redis.set(claim.key, claim.running_value)
        keyed = IdempotencyWrite(claim, "done", 60)
        mode = "bill" if auction_id == "keyed" else auction_id
        await producer.record(event, audit, mode, keyed)  # type: ignore[arg-type]
    return ids


def test_migrations_apply_once_and_partition_by_day(archive_dsn: str) -> None:
    """The first `migrate` applies every file, a second applies none; the table is range-partitioned."""
    first = asyncio.run(migrated(archive_dsn))
    assert first and first[0].startswith("0001_")
    assert asyncio.run(migrated(archive_dsn)) == []
    with psycopg.connect(archive_dsn) as conn:
        row = conn.execute(
            "SELECT partstrat, a.attname FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = p.partattrs[0] "
            "WHERE c.relname = 'auction_records'"
        ).fetchone()
    assert row == ("r", "created_at")


def test_every_final_write_queues_its_record_only_with_archive_dsn(
    redis_server: RedisServerProcess, archive_dsn: str, tmp_path: Path
) -> None:
    """All four final writes queue their record in the same write; without ARCHIVE_DSN nothing is queued."""

    async def run(dsn: str) -> list[str]:
        redis = aioredis.Redis.from_url(redis_server.url)
        try:
            await redis.flushall()
            producer = BillingProducer(redis, settings_for(redis_server, dsn, tmp_path))
            await write_four_ways(producer, redis, int(time.time() * 1000))
            return sorted(m.decode() for m in await redis.zrange(ARCHIVE_QUEUE_KEY, 0, -1))
        finally:
            await redis.aclose()

    assert asyncio.run(run(archive_dsn)) == sorted(
        f"mosaic:auction:{i}" for i in ("unkeyed", "keyed", "pending", "none")
    )
    assert asyncio.run(run("")) == []


def test_archiver_moves_records_then_drops_them(
    redis_server: RedisServerProcess, archive_dsn: str, tmp_path: Path
) -> None:
    """Each record lands in PostgreSQL byte for byte, in its day's partition; then Redis drops it and its
    queue entry; the reader answers the same text before and after."""
    settings = settings_for(redis_server, archive_dsn, tmp_path, archive_batch=3)

    async def run() -> None:
        async with opened(settings) as (redis, store):
            now_ms = int(time.time() * 1000)
            ids = await write_four_ways(BillingProducer(redis, settings), redis, now_ms)
            reader = RecordReader(redis, store)
            before = {i: await reader.raw(i) for i in ids}
            archiver = Archiver(redis, store, settings)
            assert await archiver.drain() == 4 and archiver.stats.batches == 2
            assert archiver.stats.archived == 4 and archiver.stats.repeated == 0
            assert await redis.zcard(ARCHIVE_QUEUE_KEY) == 0
            assert await redis.exists(*(f"mosaic:auction:{i}" for i in ids)) == 0
            assert {i: await reader.raw(i) for i in ids} == before
            assert await RecordReader(redis).raw("keyed") is None  # without the archive: gone
            async with store.pool.connection() as conn:
                day = dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC).date()
                assert [d for _, d in await partitions(conn)] == [day]

    asyncio.run(run())


def test_a_record_archived_twice_is_stored_once(
    redis_server: RedisServerProcess, archive_dsn: str, tmp_path: Path
) -> None:
    """A commit whose drop never ran (a kill between them): the next pass writes nothing new, drops."""
    settings = settings_for(redis_server, archive_dsn, tmp_path)

    async def run() -> None:
        async with opened(settings) as (redis, store):
            now_ms = int(time.time() * 1000)
            for i in range(10):
                async with redis.pipeline(transaction=True) as pipe:
                    pipe.set(f"mosaic:auction:a{i}", record_json(f"a{i}", now_ms - i * DAY_MS))
                    pipe.zadd(ARCHIVE_QUEUE_KEY, {f"mosaic:auction:a{i}": now_ms})
                    await pipe.execute()
            assert (
                await store.write(
                    [archived_record(f"a{i}", record_json(f"a{i}", now_ms - i * DAY_MS), 0) for i in range(4)]
                )
                == 4
            )
            archiver = Archiver(redis, store, settings)
            assert await archiver.drain() == 10
            assert (archiver.stats.archived, archiver.stats.repeated) == (6, 4)
            assert await store.count() == 10
            assert sorted(await store.by_advertiser("alice", limit=3)) == ["a0", "a1", "a2"]
            assert await store.by_advertiser("nobody") == []

    asyncio.run(run())


def test_expired_record_leaves_the_queue(
    redis_server: RedisServerProcess, archive_dsn: str, tmp_path: Path
) -> None:
    """A queued key whose record is gone (AUDIT_TTL_S passed first) is dropped from the queue, counted."""
    settings = settings_for(redis_server, archive_dsn, tmp_path)

    async def run() -> None:
        async with opened(settings) as (redis, store):
            await redis.zadd(ARCHIVE_QUEUE_KEY, {"mosaic:auction:gone": 1})
            archiver = Archiver(redis, store, settings)
            assert await archiver.drain() == 1
            assert (archiver.stats.expired, archiver.stats.archived) == (1, 0)
            assert await redis.zcard(ARCHIVE_QUEUE_KEY) == 0

    asyncio.run(run())


def test_retention_drops_whole_old_partitions(
    redis_server: RedisServerProcess, archive_dsn: str, tmp_path: Path
) -> None:
    """Partitions whose day ended before the cutoff are dropped; newer ones and their rows stay."""
    settings = settings_for(redis_server, archive_dsn, tmp_path)

    async def run() -> None:
        async with opened(settings) as (_redis, store):
            now_ms = int(time.time() * 1000)
            rows = [
                archived_record(f"r{age}", record_json(f"r{age}", now_ms - age * DAY_MS), 0)
                for age in range(8)
            ]
            assert await store.write(rows) == 8
            async with store.pool.connection() as conn:
                dropped = await drop_before(conn, dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
                assert len(dropped) == 4  # ages 4..7 ended before now - 3 days; age 3's day has not
                assert len(await partitions(conn)) == 4
            assert await store.count() == 4
            assert await store.record("r3") is not None and await store.record("r4") is None

    asyncio.run(run())


def test_archive_down_is_503_naming_it_and_old_schema_refused(
    redis_server: RedisServerProcess, tmp_path: Path
) -> None:
    """A gateway refuses to start on an un-migrated archive (naming the command); once started, a record
    Redis no longer has, with PostgreSQL down, is 503 naming PostgreSQL (not 404: it may exist); with
    PostgreSQL down at start the gateway starts all the same (auctions need none) and answers that 503."""
    from fastapi.testclient import TestClient

    from app.gateway.app import create_app
    from tests.fixtures_postgres import start_postgres

    server = start_postgres()
    try:
        dsn = server.fresh_database()
        settings = settings_for(
            redis_server, dsn, tmp_path, worker_urls=["http://127.0.0.1:9"], log_json=False
        )
        with pytest.raises(Exception, match="mosaic archive migrate"), TestClient(create_app(settings)):
            pass
        asyncio.run(migrated(dsn))
        with TestClient(create_app(settings)) as client:
            assert client.get("/auctions/0123456789abcdef").status_code == 404
            server.stop()
            answer = client.get("/auctions/0123456789abcdef")
            assert answer.status_code == 503 and "PostgreSQL" in answer.json()["detail"], answer.text
        with TestClient(create_app(settings)) as down:  # PostgreSQL down at start: serves on
            assert down.get("/healthz").status_code == 200
            answer = down.get("/auctions/0123456789abcdef")
            assert answer.status_code == 503 and "PostgreSQL" in answer.json()["detail"], answer.text
    finally:
        server.stop()


def test_billing_events_archived_by_their_group_then_acknowledged(
    redis_server: RedisServerProcess, archive_dsn: str, tmp_path: Path
) -> None:
    """Every billing stream entry reaches billing_events once, with its fields as Redis held them, then
    is acknowledged by the ``archive`` group; entries read before a kill (pending, never acknowledged)
    are archived on the next pass; while the group lags, the ledger's trim removes none of its entries,
    and once it has acknowledged them the trim removes the old ones."""
    from app.archive.events import ARCHIVE_CONSUMER, ARCHIVE_GROUP, EventArchiver
    from app.ledger.trim import LedgerTrimmer

    settings = settings_for(redis_server, archive_dsn, tmp_path, archive_batch=4, billing_retention_s=400)

    async def run() -> None:
        async with opened(settings) as (redis, store):
            events = EventArchiver(redis, store, settings)
            await events.ensure_group()
            old_ms = int(time.time() * 1000) - 3 * DAY_MS  # entries older than any retention
            producer = BillingProducer(redis, settings)
            for i in range(10):
                event = make_billing_event(f"e{i}", {"alice": 0.1, "bob": 0.2 * i}, "USD", now_ms=old_ms)
                await redis.xadd(settings.billing_stream, event.stream_fields(), id=f"{old_ms + i}-0")
            await producer.append(make_billing_event("e10", {"carol": 1.0}, "USD"))
            await redis.xreadgroup(ARCHIVE_GROUP, ARCHIVE_CONSUMER, {settings.billing_stream: ">"}, count=3)
            assert (await LedgerTrimmer(redis, settings).trim_once()).entries == 0  # nothing archived yet
            while await events.archive_once():
                pass
            assert events.archived == 11
            assert (await redis.xpending(settings.billing_stream, ARCHIVE_GROUP))["pending"] == 0
            stream = {
                k.decode(): {a.decode(): b.decode() for a, b in f.items()}
                for k, f in await redis.xrange(settings.billing_stream)
            }
            async with store.pool.connection() as conn:
                cursor = await conn.execute("SELECT stream_id, fields, advertiser_ids FROM billing_events")
                rows = await cursor.fetchall()
            assert {r[0]: r[1] for r in rows} == stream
            assert sorted(r[2] for r in rows)[0] == ["alice", "bob"]
            assert (
                await LedgerTrimmer(redis, settings).trim_once()
            ).entries == 10  # archived: the old ten go

    asyncio.run(run())


def test_cli_migrate_and_retention(
    archive_dsn: str, redis_server: RedisServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mosaic archive migrate` applies the files once (then says the schema is current);
    `mosaic archive retention --days N` drops the partitions that ended N days ago, names them, and
    keeps the rest; without ARCHIVE_DSN both fail naming the setting."""
    from typer.testing import CliRunner

    from app.cli import cli

    runner = CliRunner()
    monkeypatch.setenv("ARCHIVE_DSN", archive_dsn)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    first = runner.invoke(cli, ["archive", "migrate"])
    assert first.exit_code == 0 and "0001_auction_records.sql" in first.output and "0002_" in first.output
    assert "schema current" in runner.invoke(cli, ["archive", "migrate"]).output

    async def fill() -> None:
        store = ArchiveStore(archive_dsn)
        await store.open()
        now_ms = int(time.time() * 1000)
        await store.write(
            [archived_record(f"c{a}", record_json(f"c{a}", now_ms - a * DAY_MS), 0) for a in (0, 5)]
        )
        await store.close()

    asyncio.run(fill())
    old_day = (dt.datetime.now(dt.UTC) - dt.timedelta(days=5)).strftime("%Y%m%d")
    dropped = runner.invoke(cli, ["archive", "retention", "--days", "2"])
    assert dropped.exit_code == 0 and f"auction_records_p{old_day}" in dropped.output, dropped.output
    assert "nothing" in runner.invoke(cli, ["archive", "retention", "--days", "2"]).output
    monkeypatch.setenv("ARCHIVE_DSN", "")
    failed = runner.invoke(cli, ["archive", "migrate"])
    assert failed.exit_code != 0 and "ARCHIVE_DSN" in str(failed.exception)


def test_one_archiver_at_a_time(redis_server: RedisServerProcess, archive_dsn: str, tmp_path: Path) -> None:
    """While one archiver holds the lease another does no work; a released lease, or a lapsed one (its
    holder killed), lets the other take over."""
    settings = settings_for(redis_server, archive_dsn, tmp_path, archive_batch=2, archive_lease_s=0.3)

    async def run() -> None:
        async with opened(settings) as (redis, store):
            now_ms = int(time.time() * 1000)
            for i in range(8):
                await redis.set(f"mosaic:auction:l{i}", record_json(f"l{i}", now_ms))
                await redis.zadd(ARCHIVE_QUEUE_KEY, {f"mosaic:auction:l{i}": now_ms})
            first, second, state_a, state_b = (
                Archiver(redis, store, settings),
                Archiver(redis, store, settings),
                {},
                {},
            )
            assert await first.pass_once(state_a) == 2
            assert await second.pass_once(state_b) == 0 and second.stats.batches == 0
            assert await first.pass_once(state_a) == 2  # renewed: still the holder
            await first.lease.release()
            assert await second.pass_once(state_b) == 2
            assert await first.pass_once(state_a) == 0
            await asyncio.sleep(0.4)  # the holder stops renewing (killed): its lease lapses
            assert await first.pass_once(state_a) == 2
            assert await store.count() == 8 and await redis.zcard(ARCHIVE_QUEUE_KEY) == 0

    asyncio.run(run())
