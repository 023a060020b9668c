"""`bench/ledger.py --cluster`: the ledger on a real Redis Cluster (3 primaries + 3 replicas of Debian's
redis-server, started here on loopback, AOF on, appendfsync as --appendfsync) against one primary.

* consumer: events applied per second, each consumer draining --events pre-loaded events of its shard:
  ONE plain redis-server (today's single Redis); the cluster with ONE ledger shard (all of the ledger in
  one slot: one primary works); the cluster with THREE shards ``{ledger:s<k>}`` chosen on three
  different primaries, one consumer process each, started together: events/s = all events / the
  slowest consumer's time. The ratio 3 primaries / 1 primary is the figure issue 36 asks for;
* producer: the latency of the billing write (record + event in one MULTI) on the cluster with
  ``WAIT 1`` after it (REDIS_WAIT_REPLICAS=1) and without (0), interleaved pairs, p50/p99.

Prints a table, then ``name=value`` pairs last. Run: ``.venv/bin/python bench/ledger.py --cluster
[--events 20000] [--appends 500]``. Needs Debian's redis-server (``make redis-cluster``). The machine's
cores bound the 3-shard figure: 6 redis-servers and 3 consumer processes share them (state `nproc`).
See docs/DESIGN.md § The hot state on a Redis Cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.ledger.keys import shard_tag
from app.ledger.producer import BillingProducer
from app.ledger.redis_store import RedisServer, free_loopback_port, make_client
from app.settings import Settings
from bench.common import percentile
from bench.ledger import drain, make_events, preload
from tests.fixtures_redis_cluster import RedisCluster, start_redis_cluster


def cluster_settings(url: str, batch: int, wait: int = 1) -> Settings:
    return Settings(
        redis_url=url,
        redis_cluster=True,
        redis_wait_replicas=wait,
        billing_batch_size=batch,
        billing_block_ms=100,
    )


def shards_on_distinct_primaries(cluster: RedisCluster, count: int) -> list[int]:
    """The first shard numbers (from 1) whose tags hash to `count` different primaries."""
    chosen: dict[int, int] = {}
    for shard in range(1, 1000):  # shard 0 holds the 1-shard run's events
        port = cluster.primary_for(shard_tag(shard)).port or 0
        if port not in chosen:
            chosen[port] = shard
        if len(chosen) == count:
            return sorted(chosen.values())
    raise RuntimeError("no shards on distinct primaries")


def _drain_process(
    url: str, batch: int, shard: int, n: int, start_at: float, out: multiprocessing.Queue
) -> None:  # type: ignore[type-arg]
    async def go() -> tuple[float, int]:
        settings = cluster_settings(url, batch)
        client = make_client(url, settings)
        try:
            consumer = await preload(client, settings, n, False, shard)
            await asyncio.sleep(max(0.0, start_at - time.time()))
            return await drain(client, consumer, n)
        finally:
            await client.aclose()

    out.put((shard, *asyncio.run(go())))


def parallel_shards(url: str, batch: int, shards: list[int], n: int) -> tuple[float, int]:
    """One consumer process per shard, started together after all pre-loaded: (slowest s, applied)."""
    out: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()  # type: ignore[type-arg]
    start_at = time.time() + 10 + n / 4000  # after every process has pre-loaded its events
    procs = [
        multiprocessing.get_context("spawn").Process(
            target=_drain_process, args=(url, batch, s, n, start_at, out)
        )
        for s in shards
    ]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    return max(r[1] for r in results), sum(r[2] for r in results)


async def one_primary(args: argparse.Namespace, tmp: Path) -> tuple[float, int]:
    server = RedisServer(tmp / "single", port=free_loopback_port(), appendfsync=args.appendfsync)
    server.start()
    try:
        settings = Settings(redis_url=server.url, billing_batch_size=args.batch_size, billing_block_ms=100)
        client = make_client(server.url, settings)
        try:
            return await drain(client, await preload(client, settings, args.events, False), args.events)
        finally:
            await client.aclose()
    finally:
        server.stop()


async def one_shard(url: str, args: argparse.Namespace) -> tuple[float, int]:
    settings = cluster_settings(url, args.batch_size)
    client = make_client(url, settings)
    try:
        return await drain(client, await preload(client, settings, args.events, False), args.events)
    finally:
        await client.aclose()


async def wait_cost(url: str, n: int) -> tuple[list[float], list[float]]:
    """Billing writes (record + event, one MULTI) with WAIT 1 and without, interleaved: ms each."""
    clients = [make_client(url, cluster_settings(url, 256, wait)) for wait in (1, 0)]
    producers = [
        BillingProducer(c, cluster_settings(url, 256, w)) for c, w in zip(clients, (1, 0), strict=True)
    ]
    events = make_events(2 * n + 40, seed=7, prefix="w")
    record = "x" * 5400  # an audit record's typical size
    lat: tuple[list[float], list[float]] = ([], [])
    try:
        for i, event in enumerate(events):
            which = i % 2
            started = time.perf_counter()
            await producers[which].append(
                event, (f"{{ledger:s0}}mosaic:auction:{event.auction_id}", record, 600)
            )
            if i >= 40:
                lat[which].append((time.perf_counter() - started) * 1000)
    finally:
        for client in clients:
            await client.aclose()
    return lat


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="mosaic-bench-cluster-", dir=args.dir) as name:
        tmp = Path(name)
        single_s, single_n = asyncio.run(one_primary(args, tmp))
        cluster = start_redis_cluster(tmp / "cluster", appendfsync=args.appendfsync)
        try:
            url = cluster.url
            one_s, one_n = asyncio.run(one_shard(url, args))
            shards = shards_on_distinct_primaries(cluster, 3)
            three_s, three_n = parallel_shards(url, args.batch_size, shards, args.events)
            waited, plain = asyncio.run(wait_cost(url, args.appends))
        finally:
            cluster.stop()
    single, one, three = single_n / single_s, one_n / one_s, three_n / three_s
    rows = [
        ("machine", f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; appendfsync {args.appendfsync}"),
        (
            "consumer, 1 primary (plain redis-server)",
            f"{single_n} events in {single_s:.2f} s = {single:,.0f}/s",
        ),
        ("consumer, cluster, 1 ledger shard", f"{one_n} events in {one_s:.2f} s = {one:,.0f}/s"),
        (
            f"consumer, cluster, 3 shards {shards}, 3 processes",
            f"{three_n} events in {three_s:.2f} s = {three:,.0f}/s",
        ),
        ("ratio 3 primaries / 1 primary", f"{three / single:.2f}"),
        ("bill write on the cluster, WAIT 1", _lat(waited)),
        ("bill write on the cluster, no WAIT", _lat(plain)),
    ]
    width = max(len(label) for label, _ in rows)
    print(f"{'measure'.ljust(width)} | result")
    print(f"{'-' * width}-+-{'-' * 40}")
    for label, value in rows:
        print(f"{label.ljust(width)} | {value}")
    wait_ms = statistics.median(waited) - statistics.median(plain)
    print(
        f"events_per_s_1_primary={single:.0f} events_per_s_cluster_1_shard={one:.0f} "
        f"events_per_s_3_primaries={three:.0f} ratio_3_to_1={three / single:.2f} "
        f"bill_p50_ms_wait={statistics.median(waited):.3f} "
        f"bill_p50_ms_no_wait={statistics.median(plain):.3f} wait_cost_p50_ms={wait_ms:.3f}"
    )
    ok = single_n == args.events and one_n == args.events and three_n == 3 * args.events
    return 0 if ok else 1


def _lat(values: list[float]) -> str:
    return f"p50 {statistics.median(values):.3f} ms, p99 {percentile(values, 0.99):.3f} ms (n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=20_000, help="Events each consumer applies.")
    parser.add_argument(
        "--appends", type=int, default=500, help="Timed bill writes per variant (WAIT or not)."
    )
    parser.add_argument("--batch-size", type=int, default=256, help="BILLING_BATCH_SIZE of the consumers.")
    parser.add_argument("--appendfsync", choices=["always", "everysec"], default="always")
    parser.add_argument(
        "--dir", default=None, help="Where the servers keep their AOFs (default: a temp dir)."
    )
    raise SystemExit(run(parser.parse_args()))


if __name__ == "__main__":
    main()
