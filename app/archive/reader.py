"""Where a route reads an auction's record: Redis first, then the archive.

Job: `RecordReader.raw(auction_id)` returns the record's JSON text from Redis (`mosaic:auction:<id>`)
or, when Redis no longer has it and an archive is configured (ARCHIVE_DSN), from PostgreSQL: the same
text, so every reader (GET /auctions/{id}, the what-if, /why, /proof, the render route, `mosaic
verify` through them) answers the same body and status before and after archiving. Without an
archive it is exactly the Redis read of before. Imports redis, app.archive.store and app.ledger.keys.
See docs/DESIGN.md § Archive.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from app.archive.store import ArchiveStore
from app.ledger.keys import AUCTION_KEY_PREFIX, as_str


class RecordReader:
    """The stored records: Redis, then (if given) the archive."""

    def __init__(
        self, redis: aioredis.Redis, archive: ArchiveStore | None = None, key_prefix: str = AUCTION_KEY_PREFIX
    ) -> None:
        self.redis = redis
        self.archive = archive
        self.key_prefix = key_prefix  # on a Redis Cluster with the shard's tag (app.ledger.keys.hot_key)

    async def raw(self, auction_id: str) -> str | None:
        """The record's JSON text, or None where neither Redis nor the archive has it. A PostgreSQL
        fault raises ArchiveUnavailableError (the gateway answers 503 naming it)."""
        found = await self.redis.get(self.key_prefix + auction_id)
        if found is not None:
            return as_str(found)
        if self.archive is None:
            return None
        return await self.archive.record(auction_id)

    async def record(self, auction_id: str) -> dict[str, Any] | None:
        raw = await self.raw(auction_id)
        if raw is None:
            return None
        record: dict[str, Any] = json.loads(raw)
        return record
