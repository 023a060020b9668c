"""Audit archive benchmark (issue 36): a real redis-server and a real PostgreSQL started here.

* throughput: --records queued audit records of --record-bytes each, spread over --days days (one
  partition a day), drained by one `Archiver` (ARCHIVE_BATCH=--batch): records/s from Redis to
  committed PostgreSQL rows and back (dropped from Redis);
* read: p50/p99 of `RecordReader.raw` for --reads random archived ids (a Redis miss, then PostgreSQL's
  primary-key index, one probe per day partition: the ids are UUIDs, they carry no day), against the
  same read while the record is still in Redis;
* memory: Redis bytes per auction after --auctions keyed auctions through `BillingProducer.record`
  (record, billing event, Idempotency-Key outcome with a --answer-bytes answer), with ARCHIVE_DSN
  empty and then with archiving on after the archiver drained; the stream entries are left in both
  (the ledger's own trim removes them, DESIGN.md § Bounded Redis memory) and reported apart.

Prints a table; the last line holds ``name=value`` pairs.
Run: ``.venv/bin/python bench/archive.py [--records 50000] [--reads 2000] [--auctions 5000] [--dsn DSN]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.archive.archiver import Archiver
from app.archive.reader import RecordReader
from app.archive.schema import migrate
from app.archive.store import ArchiveStore
from app.ledger.events import make_billing_event
from app.ledger.idempotency import IdempotencyClaim, IdempotencyWrite
from app.ledger.keys import ARCHIVE_QUEUE_KEY
from app.ledger.producer import BillingProducer
from app.ledger.redis_store import RedisServer
from app.settings import Settings

DAY_MS = 86_400_000


def record_text(auction_id: str, created_ms: int, size: int) -> str:
    body = {
        "auction_id": auction_id,
        "created_at_ms": created_ms,
        "advertisers": [{"id": "alice"}, {"id": "bob"}],
    }
    padding = max(0, size - len(json.dumps(body)) - 12)
    body["pad"] = "x" * padding
    return json.dumps(body, separators=(",", ":"))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def throughput(
    redis: aioredis.Redis, store: ArchiveStore, settings: Settings, args: Any
) -> dict[str, str]:
    now_ms = int(time.time() * 1000)
    ids = [uuid.uuid4().hex for _ in range(args.records)]
    for start in range(0, len(ids), 1000):
        pipe = redis.pipeline(transaction=False)
        for n, auction_id in enumerate(ids[start : start + 1000], start):
            pipe.set(
                f"mosaic:auction:{auction_id}",
                record_text(auction_id, now_ms - (n % args.days) * DAY_MS, args.record_bytes),
            )
            pipe.zadd(ARCHIVE_QUEUE_KEY, {f"mosaic:auction:{auction_id}": now_ms})
        await pipe.execute()
    archiver = Archiver(redis, store, settings)
    started = time.perf_counter()
    settled = await archiver.drain()
    elapsed = time.perf_counter() - started
    assert settled == args.records and await store.count() >= args.records
    figures = {"archive_records": str(settled), "archive_records_per_s": f"{settled / elapsed:.0f}"}
    reader = RecordReader(redis, store)
    sample = random.Random(36).sample(ids, min(args.reads, len(ids)))
    latencies = []
    for auction_id in sample:
        t0 = time.perf_counter()
        assert await reader.raw(auction_id) is not None
        latencies.append((time.perf_counter() - t0) * 1000)
    figures["read_archived_p50_ms"] = f"{pct(latencies, 0.5):.3f}"
    figures["read_archived_p99_ms"] = f"{pct(latencies, 0.99):.3f}"
    await redis.set("mosaic:auction:hot", record_text("hot", now_ms, args.record_bytes))
    hot = []
    for _ in range(len(sample)):
        t0 = time.perf_counter()
        await reader.raw("hot")
        hot.append((time.perf_counter() - t0) * 1000)
    figures["read_redis_p50_ms"] = f"{pct(hot, 0.5):.3f}"
    figures["read_redis_p99_ms"] = f"{pct(hot, 0.99):.3f}"
    figures["partitions"] = str(args.days)
    return figures


async def memory_per_auction(
    redis: aioredis.Redis, store: ArchiveStore, settings: Settings, args: Any
) -> float:
    """Redis used_memory per keyed auction (its stream entries excluded) after --auctions of them."""
    await redis.flushall()
    before = int((await redis.info("memory"))["used_memory"])
    producer = BillingProducer(redis, settings)
    answer = "a" * args.answer_bytes
    now_ms = int(time.time() * 1000)
    for n in range(args.auctions):
        auction_id = uuid.uuid4().hex
        claim = IdempotencyClaim(f"mosaic:idem:bench:{n:08d}", "run", "fp")
        done = IdempotencyWrite(claim, json.dumps({"s": 200, "b": answer, "a": auction_id}), 86_400)
        event = make_billing_event(auction_id, {"alice": 0.01, "bob": 0.02}, "USD", now_ms=now_ms)
        audit = (f"mosaic:auction:{auction_id}", record_text(auction_id, now_ms, args.record_bytes), 604_800)
        await producer.record(event, audit, "bill", done)
    if settings.archive_dsn:
        await Archiver(redis, store, settings).drain()
    stream = int(await redis.memory_usage(settings.billing_stream, samples=0) or 0)
    used = int((await redis.info("memory"))["used_memory"])
    return (used - before - stream) / args.auctions


async def run(args: Any, dsn: str, redis_url: str, data_dir: Path) -> dict[str, str]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await migrate(conn)
    settings = Settings(redis_url=redis_url, data_dir=data_dir, archive_dsn=dsn, archive_batch=args.batch)
    store = ArchiveStore(dsn)
    await store.open()
    redis = aioredis.Redis.from_url(redis_url)
    try:
        figures = await throughput(redis, store, settings, args)
        off = await memory_per_auction(redis, store, settings.model_copy(update={"archive_dsn": ""}), args)
        on = await memory_per_auction(redis, store, settings, args)
        figures["redis_bytes_per_auction_archive_off"] = f"{off:.0f}"
        figures["redis_bytes_per_auction_archive_on"] = f"{on:.0f}"
        return figures
    finally:
        await redis.aclose()
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--record-bytes", type=int, default=5400, help="DESIGN.md: ~5.4 KB per record")
    parser.add_argument("--answer-bytes", type=int, default=1500, help="the Idempotency-Key's stored answer")
    parser.add_argument("--days", type=int, default=30, help="partitions the records spread over")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--auctions", type=int, default=5000)
    parser.add_argument("--dsn", default="", help="an existing PostgreSQL (default: a throw-away cluster)")
    parser.add_argument("--appendfsync", default="always")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis", appendfsync=args.appendfsync)
        server.start()
        postgres = None
        if not args.dsn:
            from tests.fixtures_postgres import PostgresServer, postgres_bin

            bin_dir = postgres_bin()
            if bin_dir is None:
                raise SystemExit("PostgreSQL binaries not found: apt-get install postgresql, or pass --dsn")
            postgres = PostgresServer(bin_dir).start()
        try:
            dsn = args.dsn or (postgres.fresh_database() if postgres else "")
            figures = asyncio.run(run(args, dsn, server.url, Path(tmp)))
        finally:
            server.stop()
            if postgres is not None:
                postgres.stop()
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value}")
    print(" ".join(f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
