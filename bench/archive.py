"""Audit archive benchmark (issue 36): a real redis-server and a real PostgreSQL started here.

* throughput: --records queued audit records of --record-bytes each, spread over --days days (one
  partition a day), drained by one `Archiver` (ARCHIVE_BATCH=--batch): records/s from Redis to
  committed PostgreSQL rows and back (dropped from Redis);
* read: p50/p99 of `RecordReader.raw` for --reads random archived ids (a Redis miss, then PostgreSQL's
  primary-key index, one probe per day partition: the ids are UUIDs, they carry no day), against the
  same read while the record is still in Redis;
* leaves: --leaves transparency log leaves and index entries archived and trimmed (leaves/s);
* by reference: the cost of rebuilding an answer from a SmolLM2-sized record (bench/record_size.py),
  paid once before every keyed write with ARCHIVE_DSN and once per replay, and the done values' sizes;
* memory: Redis bytes per keyed auction after --auctions of them through `BillingProducer.record`
  (a SmolLM2-sized record, its billing event applied by the real ledger consumer, its Idempotency-Key,
  its log leaf), split by how long each part stays: the key IDEMPOTENCY_TTL_S (24 h), the ledger
  (stream entry, applied marker, history) BILLING_RETENTION_S, the record and leaf until archived
  (--archive-lag-s) or, without ARCHIVE_DSN, AUDIT_TTL_S (the leaf: for ever; counted as AUDIT_TTL_S);
  `left` is what else used_memory grew by (the keyspace's tables), counted for IDEMPOTENCY_TTL_S.
  MB per auction/s of sustained rate = sum of bytes x seconds kept. Archive off: today's defaults
  (BILLING_RETENTION_S = AUDIT_TTL_S = 7 d); on: BILLING_RETENTION_S = --billing-retention-s (the
  stream is archived; 1 h by default).

Prints a table; the last line holds ``name=value`` pairs.
Run: ``.venv/bin/python bench/archive.py [--records 50000] [--reads 2000] [--auctions 5000]
[--leaves 50000] [--billing-retention-s 3600] [--dsn DSN]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
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
from app.archive.tlog import LeafArchiver
from app.auction.answers import answer_from_record
from app.ledger.consumer import LedgerConsumer
from app.ledger.events import make_billing_event
from app.ledger.idempotency import (
    AnswerRef,
    IdempotencyClaim,
    IdempotencyWrite,
    answer_digest,
    done_ref_value,
    done_value,
    redis_key,
)
from app.ledger.keys import ARCHIVE_QUEUE_KEY
from app.ledger.producer import BillingProducer
from app.ledger.redis_store import RedisServer
from app.ledger.tlog import LOG_KEYS
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


def template_record() -> str:
    """A SmolLM2-sized stored record (bench/record_size.py: M=8 candidates of 64 tokens with token ids
    and log_context, 3 advertisers, the engine record), as the gateway stores it."""
    from bench.record_size import record

    shape = argparse.Namespace(candidates=8, advertisers=3, tokens=64)
    built: Any = record(True, shape, {"model": "smollm2", "weights_sha256": "ab" * 32})
    return str(built.model_dump_json())


def rebuild_cost(text: str, repeats: int) -> dict[str, str]:
    """The by-reference outcome's CPU: `answer_from_record` runs once before every keyed write with
    ARCHIVE_DSN (the byte-for-byte check) and once per replay; and the done values' sizes."""
    body = answer_from_record(text, False)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        answer_from_record(text, False)
        times.append((time.perf_counter() - t0) * 1000)
    claim = IdempotencyClaim(redis_key("0" * 32, str(uuid.uuid4())), "run", "f" * 64)
    ref = AnswerRef("f" * 32, False, answer_digest(body))
    return {
        "record_bytes": str(len(text)),
        "answer_bytes": str(len(body)),
        "done_value_copy_bytes": str(len(done_value(claim, 200, body, "f" * 32))),
        "done_value_ref_bytes": str(len(done_ref_value(claim, 200, ref))),
        "rebuild_answer_p50_ms": f"{pct(times, 0.5):.3f}",
        "rebuild_answer_p99_ms": f"{pct(times, 0.99):.3f}",
    }


async def leaves_throughput(redis: aioredis.Redis, store: ArchiveStore, args: Any) -> dict[str, str]:
    """--leaves transparency log leaves (and index entries) moved to PostgreSQL and trimmed."""
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(args.leaves)]
    for start in range(0, len(hashes), 5000):
        pipe = redis.pipeline(transaction=False)
        pipe.rpush(LOG_KEYS.leaves, *hashes[start : start + 5000])
        pipe.hset(LOG_KEYS.index, mapping={f"L{i}": i for i in range(start, min(len(hashes), start + 5000))})
        await pipe.execute()
    archiver = LeafArchiver(redis, store, args.batch)
    started = time.perf_counter()
    while await redis.llen(LOG_KEYS.leaves) or await redis.hlen(LOG_KEYS.index):
        await archiver.archive_once()
    elapsed = time.perf_counter() - started
    return {
        "archive_leaves": str(archiver.archived),
        "archive_leaves_per_s": f"{archiver.archived / elapsed:.0f}",
    }


async def _used(redis: aioredis.Redis) -> int:
    return int((await redis.info("memory"))["used_memory"])


async def _usage(redis: aioredis.Redis, pattern: str) -> int:
    total = 0
    async for key in redis.scan_iter(match=pattern, count=1000):
        total += int(await redis.memory_usage(key, samples=0) or 0)
    return total


async def _keyed_auctions(redis: aioredis.Redis, settings: Settings, text: str, n: int) -> None:
    """N keyed auctions' final writes (record, billing event, Idempotency-Key, log leaf) as the
    gateway makes them: the key's outcome by reference with ARCHIVE_DSN, else a copy of the answer."""
    producer = BillingProducer(redis, settings)
    template_id = json.loads(text)["auction_id"]
    now_ms = int(time.time() * 1000)
    for _ in range(n):
        auction_id = uuid.uuid4().hex
        record = text.replace(template_id, auction_id)
        body = answer_from_record(record, False)
        claim = IdempotencyClaim(redis_key("0" * 32, str(uuid.uuid4())), "run", "f" * 64)
        if settings.archive_dsn:
            value = done_ref_value(claim, 200, AnswerRef(auction_id, False, answer_digest(body)))
        else:
            value = done_value(claim, 200, body, auction_id)
        done = IdempotencyWrite(claim, value, settings.idempotency_ttl_s)
        payments = {f"advertiser-{i}": 0.01 * (i + 1) for i in range(3)}
        event = make_billing_event(auction_id, payments, "USD", now_ms=now_ms)
        audit = (f"mosaic:auction:{auction_id}", record, settings.audit_ttl_s)
        await producer.record(event, audit, "bill", done, log_entry=record.encode()[:400])


async def memory_per_auction(
    redis: aioredis.Redis, store: ArchiveStore, settings: Settings, args: Any, text: str
) -> dict[str, float]:
    """Redis bytes per keyed auction, by what holds them and for how long: its Idempotency-Key (kept
    IDEMPOTENCY_TTL_S), its ledger state (stream entry, applied marker, history entries: kept
    BILLING_RETENTION_S), what waits for the archiver (record, queue entry, log leaf and index entry:
    seconds with ARCHIVE_DSN, else the record AUDIT_TTL_S and the leaf for ever), and what is left."""
    await redis.flushall()
    base = await _used(redis)
    consumer = LedgerConsumer(redis, settings, "bench")
    await consumer.ensure_group()
    archiver = Archiver(redis, store, settings)
    if settings.archive_dsn:
        await archiver.events.ensure_group()
    n = args.auctions
    await _keyed_auctions(redis, settings, text, n)
    idem = await _usage(redis, "mosaic:idem:*") / n
    record = await _usage(redis, "mosaic:auction:*") / n
    log = (
        sum([int(await redis.memory_usage(k, samples=0) or 0) for k in (LOG_KEYS.leaves, LOG_KEYS.index)]) / n
    )
    before_apply = await _used(redis)
    while await consumer.process_batch():
        pass
    ledger = (await _used(redis) - before_apply) / n
    stream = int(await redis.memory_usage(settings.billing_stream, samples=0) or 0) / n
    if settings.archive_dsn:
        await archiver.drain()
        while await archiver.events.archive_once() or await archiver.leaves.archive_once():
            pass
        while await redis.hlen(LOG_KEYS.index):  # one HSCAN step of the index per pass
            await archiver.leaves.archive_once()
    left = (await _used(redis) - base) / n - idem - stream - ledger
    if not settings.archive_dsn:
        left -= record + log  # they stay (counted above): `left` is what else stays
    return {"idem": idem, "record": record, "log": log, "ledger": ledger + stream, "left": left}


def per_auction_s(parts: dict[str, float], settings: Settings, args: Any) -> float:
    """MB of Redis per auction/s of sustained rate: each part times how long it is kept."""
    hot_s = args.archive_lag_s if settings.archive_dsn else settings.audit_ttl_s
    total = parts["idem"] * settings.idempotency_ttl_s + parts["ledger"] * settings.billing_retention_s
    total += (parts["record"] + parts["log"]) * hot_s
    # `left`: used_memory not in any key's MEMORY USAGE (the keyspace's own tables): counted for as
    # long as the longest-lived per-auction key, the Idempotency-Key, stays
    total += max(parts["left"], 0.0) * settings.idempotency_ttl_s
    return total / 1e6


async def run(args: Any, dsn: str, redis_url: str, data_dir: Path) -> dict[str, str]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await migrate(conn)
    settings = Settings(redis_url=redis_url, data_dir=data_dir, archive_dsn=dsn, archive_batch=args.batch)
    text = template_record()
    store = ArchiveStore(dsn)
    await store.open()
    redis = aioredis.Redis.from_url(redis_url)
    try:
        figures = await throughput(redis, store, settings, args)
        figures.update(await leaves_throughput(redis, store, args))
        figures.update(rebuild_cost(text, args.reads))
        off_settings = settings.model_copy(update={"archive_dsn": ""})  # today's defaults: 7 d, 7 d
        on_settings = settings.model_copy(update={"billing_retention_s": args.billing_retention_s})
        for name, chosen in (("off", off_settings), ("on", on_settings)):
            parts = await memory_per_auction(redis, store, chosen, args, text)
            for part, value in parts.items():
                figures[f"archive_{name}_bytes_{part}"] = f"{value:.0f}"
            figures[f"archive_{name}_MB_per_auction_per_s"] = f"{per_auction_s(parts, chosen, args):.1f}"
        figures["archive_on_billing_retention_s"] = str(args.billing_retention_s)
        return figures
    finally:
        await redis.aclose()
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--record-bytes", type=int, default=5400, help="DESIGN.md: ~5.4 KB per record")
    parser.add_argument("--days", type=int, default=30, help="partitions the records spread over")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--auctions", type=int, default=5000)
    parser.add_argument("--leaves", type=int, default=50_000, help="transparency log leaves archived")
    parser.add_argument(
        "--billing-retention-s", type=int, default=3600, help="BILLING_RETENTION_S with the archive on"
    )
    parser.add_argument(
        "--archive-lag-s", type=float, default=5.0, help="how long a record waits for the archiver"
    )
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
