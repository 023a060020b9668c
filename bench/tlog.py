"""Transparency log benchmark against a real redis-server (AOF on) started here (issue 35).

* write: what the log adds to an auction's final write (BillingProducer.record: the leaf's EVAL in
  the same MULTI, or the extra commands in idempotency_bill.lua), p50/p99 over --writes sequential
  writes with and without `log_entry`, interleaved (A, B, A, B, ...) so drift hits both alike, for
  the unkeyed bill (MULTI), the keyed bill (one script) and the pending charge (MULTI under WATCH);
* head: a log of --leaves leaves: the first tick of a new process (reads every leaf, checks the
  latest head), then the p50 of an incremental head (--grow new leaves per tick: read them, check,
  re-read TRANSPARENCY_AUDIT_LEAVES, sign, store);
* memory: Redis bytes per auction of the leaves list and the index hash (never trimmed), and per
  stored head (the latest TRANSPARENCY_HEADS_KEPT are kept);
* proof: p50 of an inclusion path and of a consistency path at that size (server side, pymerkle's
  cached subtree roots), and of their client-side verification (app.transparency.proofs).

Prints a table; the last line holds ``name=value`` pairs.
Run: ``.venv/bin/python bench/tlog.py [--writes 2000] [--leaves 100000] [--appendfsync always]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.ledger.events import make_billing_event
from app.ledger.idempotency import IdempotencyStore, fingerprint
from app.ledger.producer import BillingProducer
from app.ledger.redis_store import RedisServer, free_loopback_port, make_client
from app.ledger.tlog import LOG_KEYS, leaf_hash_hex
from app.settings import Settings
from app.transparency.proofs import consistency_ok, inclusion_ok
from app.transparency.sequencer import TransparencyLog
from bench.common import percentile


class Signer:
    def __init__(self) -> None:
        self.kid = "bench"
        self.key = Ed25519PrivateKey.generate()

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)


def statement(auction_id: str) -> bytes:
    return rfc8785.dumps(
        {
            "v": 1,
            "kid": "bench",
            "auction_id": auction_id,
            "record_sha256": "ab" * 32,
            "shared_sha256": "cd" * 32,
        }
    )


RECORD = json.dumps({"advertisers": [{"id": f"adv{i}"} for i in range(3)], "pad": "x" * 4000})


async def one_write(
    producer: BillingProducer, store: IdempotencyStore, mode: str, keyed: bool, n: int, log: bool
) -> float:
    auction_id = f"{mode}{int(keyed)}{int(log)}x{n}"
    event = make_billing_event(auction_id, {"adv0": 0.5, "adv1": 0.25, "adv2": 0.0}, "USD")
    idem = None
    if keyed:
        claim = await store.claim("bench", auction_id, fingerprint({"n": n}), deadline_s=30)
        idem = store.write_for(claim, 200, "{}", auction_id)
    entry = statement(auction_id) if log else None
    begin = time.perf_counter()
    await producer.record(event, (f"bench:auction:{auction_id}", RECORD, 600), mode, idem, log_entry=entry)  # type: ignore[arg-type]
    return (time.perf_counter() - begin) * 1000


async def write_costs(
    client: aioredis.Redis, settings: Settings, writes: int
) -> dict[str, tuple[float, float, float, float]]:
    producer, store = BillingProducer(client, settings), IdempotencyStore(client, settings)
    results = {}
    for mode, keyed in (("bill", False), ("bill", True), ("pending", False)):
        without, with_log = [], []
        for n in range(writes):
            without.append(await one_write(producer, store, mode, keyed, n, False))
            with_log.append(await one_write(producer, store, mode, keyed, n, True))
        name = f"{mode}{'_keyed' if keyed else ''}"
        results[name] = (
            percentile(without, 0.5),
            percentile(with_log, 0.5),
            percentile(without, 0.99),
            percentile(with_log, 0.99),
        )
    return results


def timed_sync(fn: Callable[[], Any], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        begin = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - begin) * 1000)
    return percentile(samples, 0.5)


async def fill(client: aioredis.Redis, leaves: int, prefix: str) -> None:
    for start in range(0, leaves, 10_000):
        pipe = client.pipeline(transaction=False)
        ids = [f"{prefix}{i}" for i in range(start, min(leaves, start + 10_000))]
        pipe.rpush(LOG_KEYS.leaves, *(leaf_hash_hex(statement(i)) for i in ids))
        pipe.hset(LOG_KEYS.index, mapping={f"{i}{'0' * 24}": n for n, i in enumerate(ids, start=start)})
        await pipe.execute()


async def head_and_proof_costs(
    client: aioredis.Redis, settings: Settings, leaves: int, grow: int
) -> dict[str, float]:
    await client.delete(LOG_KEYS.leaves, LOG_KEYS.index, LOG_KEYS.heads)
    await fill(client, leaves, "h")
    memory = sum(
        [await client.memory_usage(key, samples=0) or 0 for key in (LOG_KEYS.leaves, LOG_KEYS.index)]
    )
    signer = Signer()
    await TransparencyLog(client, settings, signer=signer).tick()  # a head at `leaves`
    log = TransparencyLog(client, settings, signer=signer)  # a new process
    begin = time.perf_counter()
    await log.tick()
    first_tick = (time.perf_counter() - begin) * 1000

    async def heads(audit_leaves: int, prefix: str) -> float:
        log.settings = settings.model_copy(update={"transparency_audit_leaves": audit_leaves})
        samples = []
        for n in range(30):
            await fill(client, grow, f"{prefix}{n}-")
            begin = time.perf_counter()
            await log.tick()
            samples.append((time.perf_counter() - begin) * 1000)
        return percentile(samples, 0.5)

    incremental = await heads(settings.transparency_audit_leaves, "g")
    no_audit = await heads(1, "n")
    head_count = await client.zcard(LOG_KEYS.heads)
    head_bytes = (await client.memory_usage(LOG_KEYS.heads, samples=0) or 0) / head_count
    size = log.tree.size
    rng = random.Random(1)
    sign_only = timed_sync(lambda: signer.sign(b"x" * 200), 200)
    root_only = timed_sync(lambda: log.tree.root(size), 200)
    inclusion = timed_sync(lambda: log.inclusion_path(rng.randrange(size), size), 500)
    consistency = timed_sync(lambda: log.consistency_path(rng.randrange(1, size), size), 500)
    index = rng.randrange(size)
    path, root, leaf = log.inclusion_path(index, size), log.tree.root(size), log.tree.leaf(index)
    verify_inclusion = timed_sync(lambda: inclusion_ok(index, size, leaf, path, root), 500)
    first = size // 3
    cpath, old = log.consistency_path(first, size), log.tree.root(first)
    verify_consistency = timed_sync(lambda: consistency_ok(first, size, old, root, cpath), 500)
    return {
        "leaves": float(size),
        "first_tick_ms": first_tick,
        "head_p50_ms": incremental,
        "head_p50_audit_1_ms": no_audit,
        "ed25519_sign_ms": sign_only,
        "root_ms": root_only,
        "inclusion_path_ms": inclusion,
        "consistency_path_ms": consistency,
        "verify_inclusion_ms": verify_inclusion,
        "verify_consistency_ms": verify_consistency,
        "path_len": float(len(path)),
        "redis_bytes_per_head": head_bytes,
        "redis_bytes_per_auction": memory / leaves,  # leaf + index entry (32-character auction ids)
    }


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="mosaic-bench-tlog-") as tmp:
        server = RedisServer(
            Path(tmp),
            port=free_loopback_port(),
            unix_socket=Path(tmp) / "r.sock",
            appendfsync=args.appendfsync,
        )
        server.start()
        try:
            settings = Settings(redis_url=server.url, billing_stream="bench:billing", data_dir=Path(tmp))
            client = make_client(server.url, settings)  # the unix socket: the embedded default
            writes = await write_costs(client, settings, args.writes)
            heads = await head_and_proof_costs(client, settings, args.leaves, args.grow)
            await client.aclose()
        finally:
            server.stop()
    print(
        f"record write, appendfsync={args.appendfsync}, {args.writes} each (ms): p50 without / with log,",
        end="",
    )
    print(" p99 without / with")
    pairs = []
    for name, (p50a, p50b, p99a, p99b) in writes.items():
        print(f"  {name:14s} {p50a:7.3f} {p50b:7.3f}  (+{p50b - p50a:.3f})   {p99a:7.3f} {p99b:7.3f}")
        pairs.append(f"{name}_added_p50_ms={p50b - p50a:.3f}")
    print(f"log of {int(heads['leaves'])} leaves (ms):")
    for key, value in heads.items():
        print(f"  {key:22s} {value:10.4f}")
    print(" ".join(pairs + [f"{k}={v:.4f}" for k, v in heads.items()]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--writes", type=int, default=2000, help="Timed writes per case and variant.")
    parser.add_argument(
        "--leaves", type=int, default=100_000, help="Leaves in the log for the head and proof costs."
    )
    parser.add_argument("--grow", type=int, default=100, help="Leaves appended before each timed head.")
    parser.add_argument("--appendfsync", choices=["always", "everysec"], default="always")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
