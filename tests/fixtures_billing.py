"""The billing invariants that every fault test asserts, against the real Redis of the test.

`billed_count(url)`: auctions billed so far (applied markers + settled by the trim).
`assert_billed_exactly_once(url, served_ids, billed_before)`: waits (bounded) until the ledger
consumer has applied every served auction, then checks that each 200 was billed exactly once (its
marker exists; the count of billed auctions grew by exactly the number of 200s, so no failed auction
was billed) and that `reconcile` finds no difference.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

import redis.asyncio as aioredis

from app.ledger.keys import LedgerKeys
from app.ledger.reconcile import reconcile
from app.settings import Settings

KEYS = LedgerKeys.default()


async def _count(url: str) -> int:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        settled = await client.hget(KEYS.settled, "events")
        return int(await client.hlen(KEYS.applied)) + int(settled or 0)
    finally:
        await client.aclose()


def billed_count(url: str) -> int:
    return asyncio.run(_count(url))


async def _check(url: str, served: set[str], billed_before: int, timeout_s: float) -> None:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            markers = await client.hmget(KEYS.applied, sorted(served)) if served else []
            missing = [aid for aid, marker in zip(sorted(served), markers, strict=True) if marker is None]
            if not missing or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert not missing, f"served but not billed: {missing[:5]}"
        settled = await client.hget(KEYS.settled, "events")
        billed = int(await client.hlen(KEYS.applied)) + int(settled or 0)
        assert billed - billed_before == len(served), (billed, billed_before, len(served))
        report = await reconcile(client, Settings())
        assert report.ok, report.differences[:5]
    finally:
        await client.aclose()


def assert_billed_exactly_once(
    url: str, served_ids: Iterable[str], billed_before: int, timeout_s: float = 20.0
) -> None:
    served = set(served_ids)
    asyncio.run(_check(url, served, billed_before, timeout_s))
