"""The transparency log's Redis side: its leaves, the auction -> leaf index, the signed tree heads.

Job: `LogStore` reads the leaves (`size`, `leaf_hashes`), an auction's leaf index (`leaf_index`) and
the heads (`latest_head`, `head_of_size`), and stores a head (`put_head`): one head per tree size, and
only a larger one than the latest (a WATCH on the heads key: several gateways sign at once; the
first to store a size wins, the others read it back and compare roots), keeping the latest
TRANSPARENCY_HEADS_KEPT heads (about 370 bytes each: a head a second would grow Redis by ~32 MB a
day; no route needs an older head, a consistency proof takes sizes, an auditor keeps the heads she
saw). The leaves are written by the auction's own write (app.ledger.tlog, app.ledger.producer),
never here. Imports redis, app.ledger (keys, tlog) and app.transparency.heads.
See docs/DESIGN.md § Verifiable auctions.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from app.ledger.keys import as_str
from app.ledger.tlog import LOG_KEYS, LogKeys
from app.transparency.heads import SignedTreeHead

READ_CHUNK = 16384  # leaves per LRANGE


class MalformedLeafError(ValueError):
    """A stored leaf is not a 64-hex-digit hash (only an edit outside the append could write it)."""

    def __init__(self, index: int, value: str) -> None:
        super().__init__(f"leaf {index} of the log is {value[:80]!r}, not a 64-hex-digit hash")
        self.index = index


def _head(raw: Any) -> SignedTreeHead:
    return SignedTreeHead.from_dict(json.loads(as_str(raw)))


class LogStore:
    def __init__(self, redis: aioredis.Redis, keys: LogKeys = LOG_KEYS, heads_kept: int = 4096) -> None:
        self.redis = redis
        self.keys = keys
        self.heads_kept = heads_kept

    async def size(self) -> int:
        return int(await self.redis.llen(self.keys.leaves))

    async def leaf_hashes(self, start: int, stop: int) -> list[bytes]:
        """Leaves start..stop-1 (fewer if the list is shorter), as 32-byte hashes."""
        hashes: list[bytes] = []
        for offset in range(start, stop, READ_CHUNK):
            raw = await self.redis.lrange(self.keys.leaves, offset, min(stop, offset + READ_CHUNK) - 1)
            for position, value in enumerate(raw, start=offset):
                text = as_str(value)
                try:
                    digest = bytes.fromhex(text)
                except ValueError:
                    digest = b""
                if len(digest) != 32:
                    raise MalformedLeafError(position, text)
                hashes.append(digest)
            if len(raw) < READ_CHUNK:
                break
        return hashes

    async def leaf_index(self, auction_id: str) -> int | None:
        raw = await self.redis.hget(self.keys.index, auction_id)
        return None if raw is None else int(as_str(raw))

    async def latest_head(self) -> SignedTreeHead | None:
        raw = await self.redis.zrange(self.keys.heads, -1, -1)
        return _head(raw[0]) if raw else None

    async def head_of_size(self, tree_size: int) -> SignedTreeHead | None:
        raw = await self.redis.zrangebyscore(self.keys.heads, tree_size, tree_size, start=0, num=1)
        return _head(raw[0]) if raw else None

    async def put_head(self, head: SignedTreeHead) -> SignedTreeHead | None:
        """Store `head` if it is larger than the latest one; returns the head stored at its size now
        (`head`, or one another gateway stored first: same size, so the caller compares roots), or
        None when a larger head was stored first and none of this size exists (the caller moves on)."""
        for _ in range(8):
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(self.keys.heads)
                    latest = await pipe.zrange(self.keys.heads, -1, -1)
                    if latest and _head(latest[0]).tree_size >= head.tree_size:
                        await pipe.unwatch()
                        return await self.head_of_size(head.tree_size)
                    pipe.multi()
                    pipe.zadd(self.keys.heads, {head.canonical().decode(): head.tree_size})
                    pipe.zremrangebyrank(self.keys.heads, 0, -self.heads_kept - 1)  # bounded memory
                    await pipe.execute()
                    return head
                except WatchError:
                    continue
        raise RuntimeError("the heads key kept changing: no head stored (retried next tick)")
