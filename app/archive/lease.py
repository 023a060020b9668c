"""One archiver at a time: a lease in Redis, so that several gateways (each embedding an archiver) and
`mosaic archive run` processes do not all write the same batch.

Job: `ArchiveLease.hold()` takes the lease (SET NX PX of this process's token) or renews it when this
process already holds it (WATCH, compare, PEXPIRE: never renews another's); `release()` gives it back
on a clean stop. Correctness never depends on it - archiving is idempotent, two archivers at once
only repeat work - it bounds the repeated work; a SIGKILLed holder's lease lapses after
ARCHIVE_LEASE_S. Imports redis and app.ledger.keys. See docs/DESIGN.md § Archive.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from app.ledger.keys import ARCHIVE_LEASE_KEY, as_str


class ArchiveLease:
    def __init__(self, redis: aioredis.Redis, lease_s: float) -> None:
        self.redis = redis
        self.ms = max(1, int(lease_s * 1000))
        self.token = uuid.uuid4().hex

    async def hold(self) -> bool:
        """True when this process holds the lease for the next ARCHIVE_LEASE_S (taken or renewed)."""
        if await self.redis.set(ARCHIVE_LEASE_KEY, self.token, nx=True, px=self.ms):
            return True
        return await self._if_mine(lambda pipe: pipe.pexpire(ARCHIVE_LEASE_KEY, self.ms))

    async def release(self) -> None:
        await self._if_mine(lambda pipe: pipe.delete(ARCHIVE_LEASE_KEY))

    async def _if_mine(self, command: Callable[[Any], object]) -> bool:
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(ARCHIVE_LEASE_KEY)
            current = await pipe.get(ARCHIVE_LEASE_KEY)
            if current is None or as_str(current) != self.token:
                return False
            pipe.multi()
            command(pipe)
            try:
                await pipe.execute()
            except WatchError:
                return False
        return True
