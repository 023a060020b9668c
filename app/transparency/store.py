"""The transparency log's Redis side: its leaves, the auction -> leaf index, the signed tree heads.

Job: `LogStore` reads the leaves (`size`, `leaf_hashes`), an auction's leaf index (`leaf_index`) and
the heads (`latest_head`, `head_of_size`), and stores a head (`put_head`): one head per tree size, and
only a larger one than the latest (a WATCH on the heads key: several gateways sign at once; the
first to store a size wins, the others read it back and compare roots), keeping the latest
TRANSPARENCY_HEADS_KEPT heads (about 370 bytes each: a head a second would grow Redis by ~32 MB a
day; no route needs an older head, a consistency proof takes sizes, an auditor keeps the heads she
saw). The leaves are written by the auction's own write (app.ledger.tlog, app.ledger.producer),
never here. With ARCHIVE_DSN (issue 36) the first ``base`` leaves and their index entries are in
PostgreSQL (app.archive.tlog archives, then trims them): `archived` (an `ArchivedLeaves`, set by the
gateway) reads those; a leaf's index is ``base`` + its list position, and ``base`` and the list are
read in one MULTI, so a trim between two reads never shifts a leaf. An archived leaf missing from
PostgreSQL is `MissingLeafError` (the sequencer: "deleted"), never a shorter or shifted log.
Imports redis, app.ledger (keys, tlog) and app.transparency.heads.
See docs/DESIGN.md § Verifiable auctions.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

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


class MissingLeafError(ValueError):
    """A leaf the log counts is in neither Redis nor the archive (deleted, or no archive configured)."""

    def __init__(self, index: int, detail: str) -> None:
        super().__init__(f"leaf {index} of the log is missing: {detail}")
        self.index = index


class ArchivedLeaves(Protocol):
    """The leaves and index entries archived to PostgreSQL (app.archive.tlog.ArchivedLog)."""

    async def leaf_hashes(self, start: int, stop: int) -> list[bytes]:
        """Leaves start..stop-1, all of them (MissingLeafError naming the first one missing)."""
        ...

    async def leaf_index(self, auction_id: str) -> int | None: ...


def _parse_leaf(position: int, value: Any) -> bytes:
    text = as_str(value)
    try:
        digest = bytes.fromhex(text)
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise MalformedLeafError(position, text)
    return digest


def _head(raw: Any) -> SignedTreeHead:
    return SignedTreeHead.from_dict(json.loads(as_str(raw)))


class LogStore:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: LogKeys = LOG_KEYS,
        heads_kept: int = 4096,
        archived: ArchivedLeaves | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.heads_kept = heads_kept
        self.archived = archived
        self._base = 0  # the last ``base`` seen (it only grows)

    async def size(self) -> int:
        """Leaves in the log: those archived and trimmed (``base``) and those in the list."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(self.keys.base)
            pipe.llen(self.keys.leaves)
            base, length = await pipe.execute()
        return int(base or 0) + int(length)

    async def _redis_chunk(self, start: int, stop: int) -> tuple[int, list[Any]]:
        """(base, the list's values for leaves start..stop-1; none where start < base), the values read
        in one MULTI with the base they are offset by: when the base moved since it was last seen, the
        read is made again at the new offset."""
        for _ in range(8):
            assumed = self._base
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.get(self.keys.base)
                if start >= assumed:
                    pipe.lrange(self.keys.leaves, start - assumed, stop - assumed - 1)
                replies = await pipe.execute()
            base = int(replies[0] or 0)
            if base == assumed:
                return base, list(replies[1]) if start >= base else []
            self._base = base
        raise RuntimeError("the log's base kept moving: read again next tick")

    async def leaf_hashes(self, start: int, stop: int) -> list[bytes]:
        """Leaves start..stop-1 (fewer if the log is shorter), as 32-byte hashes: those archived and
        trimmed from the archive (all of them, else MissingLeafError), the others from Redis."""
        hashes: list[bytes] = []
        position = start
        while position < stop:
            upto = min(stop, position + READ_CHUNK)
            base, values = await self._redis_chunk(position, upto)
            if position < base:  # archived and trimmed from Redis: PostgreSQL holds it
                upto = min(stop, base)
                if self.archived is None:
                    raise MissingLeafError(position, "trimmed from Redis and no archive (ARCHIVE_DSN) is set")
                hashes += await self.archived.leaf_hashes(position, upto)
                position = upto
                continue
            hashes += [_parse_leaf(p, value) for p, value in enumerate(values, start=position)]
            position += len(values)
            if position < upto:  # the list ends here
                break
        return hashes

    async def leaf_index(self, auction_id: str) -> int | None:
        """The auction's leaf index: from Redis, else (archived) from the archive."""
        raw = await self.redis.hget(self.keys.index, auction_id)
        if raw is not None:
            return int(as_str(raw))
        return None if self.archived is None else await self.archived.leaf_index(auction_id)

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
