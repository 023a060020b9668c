"""Ledger benchmark against a real redis-server (AOF on, appendfsync always) started here.

* producer: the latency BillingProducer.append adds to an auction (one XADD, fsynced before the
  reply), p50/p99 over --appends sequential appends, over loopback TCP and over the unix socket
  (the embedded default's transport);
* consumer: events applied per second by ONE LedgerConsumer (pipelined EVALSHA batches of
  BILLING_BATCH_SIZE, then XACK) draining --events pre-loaded events over loopback TCP; with
  --campaigns every payment is on a campaign whose reservation was made beforehand, so the consumer
  also posts one budget reservation per advertiser (in the same MULTI round trip as the applies).

Prints a table; the last line is ``events_per_s=<n> producer_p50_ms=<ms>`` (TCP figures).
Run: ``.venv/bin/python bench/ledger.py [--events 20000] [--appends 2000]``. With ``--cluster``: the
ledger on a real Redis Cluster, 1 primary vs 3 primaries, and the cost of WAIT (bench/ledger_cluster.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis
from redis.utils import HIREDIS_AVAILABLE

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.ledger.budget import BudgetLedger, BudgetLimits, Reservation
from app.ledger.consumer import LedgerConsumer
from app.ledger.events import BillingEvent, make_billing_event
from app.ledger.keys import stream_key
from app.ledger.producer import BillingProducer
from app.ledger.reconcile import reconcile
from app.ledger.redis_store import RedisServer, free_loopback_port, make_client
from app.settings import Settings
from bench.common import percentile


def make_events(n: int, seed: int, prefix: str, campaigns: bool = False) -> list[BillingEvent]:
    rng = random.Random(seed)
    advertisers = [f"adv-{i}" for i in range(50)]
    events = []
    for i in range(n):
        payments = {a: rng.uniform(0.0, 2.0) for a in rng.sample(advertisers, rng.randint(1, 4))}
        by_campaign = {a: f"camp-{a}" for a in payments} if campaigns else None
        events.append(make_billing_event(f"{prefix}-{i}", payments, "USD", campaigns=by_campaign))
    return events


async def reserve_for(client: aioredis.Redis, settings: Settings, events: list[BillingEvent]) -> None:
    """The reservations the gateways would have made for these events (no limit: all fit)."""
    ledger, now_ms = BudgetLedger(client, settings), int(time.time() * 1000)
    unlimited = BudgetLimits(daily_micro=None, total_micro=None)
    reservations = [
        Reservation(c, e.auction_id, e.payments_micro[a], unlimited, "2026-01-01", now_ms + 3_600_000)
        for e in events
        for a, c in e.campaigns.items()
    ]
    for start in range(0, len(reservations), 1000):
        assert all(await ledger.reserve_all(reservations[start : start + 1000], now_ms))


def fdatasync_ms(directory: Path, n: int = 200) -> list[float]:
    """The disk's floor: one appended record + fdatasync, as Redis does per write with appendfsync always."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    latencies = []
    try:
        for _ in range(n):
            os.write(fd, b"x" * 256)
            started = time.perf_counter()
            os.fdatasync(fd)
            latencies.append((time.perf_counter() - started) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    return latencies


async def producer_latency(client: aioredis.Redis, settings: Settings, n: int, prefix: str) -> list[float]:
    producer = BillingProducer(client, settings)
    events = make_events(n + 50, seed=1, prefix=prefix)
    for event in events[:50]:  # warm-up: connections, allocator
        await producer.append(event)
    latencies = []
    for event in events[50:]:
        started = time.perf_counter()
        await producer.append(event)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def preload(
    client: aioredis.Redis, settings: Settings, n: int, campaigns: bool, shard: int = 0
) -> LedgerConsumer:
    """`n` events in the shard's stream (pipelined XADDs), reservations made; its consumer, group made."""
    events = make_events(n, seed=2 + shard, prefix=f"c{shard}", campaigns=campaigns)
    await reserve_for(client, settings, events)
    for start in range(0, n, 1000):  # pre-load quickly (pipelined XADDs)
        pipe = client.pipeline(transaction=False)
        for event in events[start : start + 1000]:
            pipe.xadd(stream_key(settings, shard), dict(event.stream_fields()))  # type: ignore[arg-type]
        await pipe.execute()
    consumer = LedgerConsumer(client, settings, "bench", shard=shard)
    await consumer.ensure_group()
    return consumer


async def drain(client: aioredis.Redis, consumer: LedgerConsumer, n: int) -> tuple[float, int]:
    """Apply `n` pre-loaded events; (seconds, events applied: HLEN of the shard's markers)."""
    applied_before = int(await client.hlen(consumer.keys.applied))
    started = time.perf_counter()
    handled = 0
    while handled < n:
        handled += await consumer.process_batch()
    elapsed = time.perf_counter() - started
    return elapsed, int(await client.hlen(consumer.keys.applied)) - applied_before


async def consumer_throughput(
    client: aioredis.Redis, settings: Settings, n: int, campaigns: bool
) -> tuple[float, int]:
    settings = settings.model_copy(update={"billing_stream": "bench:consumer"})  # only these events
    return await drain(client, await preload(client, settings, n, campaigns), n)


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="mosaic-bench-ledger-", dir=args.dir) as tmp:
        port = free_loopback_port()
        sock = Path(tmp) / "redis.sock"
        server = RedisServer(Path(tmp), port=port, unix_socket=sock, appendfsync=args.appendfsync)
        server.start()
        try:
            tcp_url = f"redis://127.0.0.1:{port}/0"
            settings = Settings(redis_url=tcp_url, billing_batch_size=args.batch_size, billing_block_ms=100)
            tcp = make_client(tcp_url, settings)
            unix = make_client(server.url, settings)
            try:
                disk = fdatasync_ms(Path(args.dir or tmp))
                tcp_lat = await producer_latency(tcp, settings, args.appends, "p-tcp")
                unix_lat = await producer_latency(unix, settings, args.appends, "p-unix")
                elapsed, applied = await consumer_throughput(tcp, settings, args.events, args.campaigns)
                report = await reconcile(
                    tcp, settings.model_copy(update={"billing_stream": "bench:consumer"})
                )
                version = (await tcp.info("server"))["redis_version"]
            finally:
                await tcp.aclose()
                await unix.aclose()
        finally:
            server.stop()
    events_per_s = applied / elapsed
    rows = [
        ("redis-server", f"{server.binary} ({version})"),
        (
            "redis-py reply parser",
            "hiredis (C)" if HIREDIS_AVAILABLE else "pure Python (pip install hiredis)",
        ),
        ("AOF", f"appendonly yes, appendfsync {args.appendfsync}, dir {tmp}"),
        ("disk floor: write + fdatasync in that dir", _lat(disk)),
        (f"producer append latency, TCP, n={len(tcp_lat)}", _lat(tcp_lat)),
        (f"producer append latency, unix socket, n={len(unix_lat)}", _lat(unix_lat)),
        (
            f"consumer: {applied} events{' with campaigns' if args.campaigns else ''}, "
            f"batches of {args.batch_size}, TCP",
            f"{elapsed:.2f} s = {events_per_s:,.0f} events/s",
        ),
        ("reconcile after the run", "ok" if report.ok else f"{len(report.differences)} differences"),
    ]
    width = max(len(label) for label, _ in rows)
    print(f"{'measure'.ljust(width)} | result")
    print(f"{'-' * width}-+-{'-' * 40}")
    for label, value in rows:
        print(f"{label.ljust(width)} | {value}")
    print(f"events_per_s={events_per_s:.0f} producer_p50_ms={statistics.median(tcp_lat):.3f}")
    return 0 if report.ok else 1


def _lat(values: list[float]) -> str:
    return (
        f"p50 {statistics.median(values):.3f} ms, p99 {percentile(values, 0.99):.3f} ms, "
        f"max {max(values):.3f} ms"
    )


def main() -> None:
    if "--cluster" in sys.argv:
        from bench.ledger_cluster import main as cluster_main

        sys.argv.remove("--cluster")
        cluster_main()
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=20_000, help="Events the consumer applies.")
    parser.add_argument("--appends", type=int, default=2_000, help="Timed producer appends per transport.")
    parser.add_argument("--batch-size", type=int, default=256, help="BILLING_BATCH_SIZE of the consumer.")
    parser.add_argument(
        "--campaigns", action="store_true", help="Payments on campaigns: the consumer posts reservations."
    )
    parser.add_argument("--appendfsync", choices=["always", "everysec"], default="always")
    parser.add_argument("--dir", default=None, help="Where Redis keeps its AOF (default: a temp dir).")
    raise SystemExit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
