"""The transparency log's leaves in PostgreSQL: archived from Redis, then trimmed there (issue 36).

Job: `LeafArchiver.archive_once` reads the oldest ARCHIVE_BATCH leaves still in Redis (``base`` and
the front of ``mosaic:tlog:leaves`` in one MULTI: leaf index = base + list position), writes them to
`tlog_leaves` in one committed transaction (ON CONFLICT DO NOTHING), and only THEN, under a WATCH of
``base``, LTRIMs them from the list and adds their count to ``base`` in one MULTI (EXEC fails if
another archiver moved the base: nothing trimmed twice). It then moves a batch of the index hash
(auction id -> leaf index; HSCAN) whose leaves are archived to `tlog_index`, committed, then HDELs
them. `ArchivedLog` reads them back for the sequencer and the proof route (app.transparency.store's
`ArchivedLeaves`). Imports psycopg, redis, app.archive.store, app.ledger (keys, tlog) and
app.transparency.store.

**Invariant (no leaf dropped before it is committed; a kill loses or duplicates nothing):** a leaf and
an index entry leave Redis only after the transaction that stores them committed; killed before the
commit, Redis holds them still; killed between the commit and the trim, the next pass reads the same
leaves at the same indexes (``base`` did not move), writes them again (conflicts: stored once) and
trims. The trim and the base move in one MULTI, so a reader (one MULTI of base + LRANGE) never sees a
leaf shifted. An index entry is moved only once its leaf is archived (index < base): until then it is
also the bill script's "one leaf per auction" guard. A leaf that is not a hash stops the batch before
it: it is never archived nor trimmed (the sequencer halts on it: `malformed`). What stays in Redis:
the leaves and entries not yet archived (seconds) and ``base``; the proofs read old leaves from
PostgreSQL (and each sequencer keeps every leaf hash in memory, as before).
See docs/DESIGN.md § Archive.
"""

from __future__ import annotations

from typing import Any, cast

import psycopg
import redis.asyncio as aioredis
from redis.exceptions import WatchError

from app.archive.store import ArchiveStore, ArchiveUnavailableError
from app.ledger.keys import as_str
from app.ledger.tlog import LOG_KEYS, LogKeys
from app.transparency.store import MissingLeafError

LEAVES_TABLE = "tlog_leaves"
INDEX_TABLE = "tlog_index"


def _leaf(value: Any) -> bytes | None:
    try:
        digest = bytes.fromhex(as_str(value))
    except ValueError:
        return None
    return digest if len(digest) == 32 else None


class LeafArchiver:
    """Moves the log's leaves and index entries from Redis to PostgreSQL (module docstring)."""

    def __init__(
        self, redis: aioredis.Redis, store: ArchiveStore, batch: int, keys: LogKeys = LOG_KEYS
    ) -> None:
        self.redis = redis
        self.store = store
        self.batch = batch
        self.keys = keys
        self._cursor = 0  # HSCAN cursor over the index hash (0: a new scan)
        self.archived = 0  # leaves trimmed after their commit
        self.indexed = 0  # index entries moved

    async def archive_once(self) -> int:
        """One batch of leaves, then one of index entries; returns how many leaves were trimmed."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(self.keys.base)
            pipe.lrange(self.keys.leaves, 0, self.batch - 1)
            base_raw, values = await pipe.execute()
        base = int(base_raw or 0)
        rows: list[tuple[int, bytes]] = []
        for position, value in enumerate(values):
            digest = _leaf(value)
            if digest is None:  # never archived nor trimmed: the sequencer reports it
                break
            rows.append((base + position, digest))
        trimmed = 0
        if rows:
            await self._write(
                f"INSERT INTO {LEAVES_TABLE} (leaf_index, leaf_hash) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                rows,
            )
            trimmed = await self._trim(base, len(rows))  # committed: from here PostgreSQL holds them
        await self._move_index(base + trimmed)
        return trimmed

    async def _trim(self, base: int, count: int) -> int:
        """LTRIM `count` leaves and add them to ``base``, only if ``base`` is still `base`."""
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(self.keys.base)
                if int(await pipe.get(self.keys.base) or 0) != base:
                    return 0  # another archiver trimmed meanwhile: nothing here
                pipe.multi()
                pipe.ltrim(self.keys.leaves, count, -1)
                pipe.incrby(self.keys.base, count)
                await pipe.execute()
            except WatchError:
                return 0
        self.archived += count
        return count

    async def _move_index(self, base: int) -> None:
        """One HSCAN step of the index: entries of archived leaves (< base) to PostgreSQL, then HDEL."""
        cursor, found = await self.redis.hscan(self.keys.index, self._cursor, count=self.batch)
        self._cursor = int(cursor)
        entries = cast(dict[Any, Any], found)
        pairs = [(as_str(a), int(as_str(i))) for a, i in entries.items() if int(as_str(i)) < base]
        if not pairs:
            return
        await self._write(
            f"INSERT INTO {INDEX_TABLE} (auction_id, leaf_index) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            pairs,
        )
        await self.redis.hdel(self.keys.index, *[auction_id for auction_id, _ in pairs])  # after the commit
        self.indexed += len(pairs)

    async def _write(self, sql: str, rows: list[Any]) -> None:
        async with self.store.pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
            await cursor.executemany(sql, rows)


class ArchivedLog:
    """The archived leaves and index entries, read for the sequencer and the proofs."""

    def __init__(self, store: ArchiveStore) -> None:
        self.store = store

    async def leaf_hashes(self, start: int, stop: int) -> list[bytes]:
        """Leaves start..stop-1, every one (MissingLeafError naming the first one missing)."""
        rows = await self._fetch(
            f"SELECT leaf_index, leaf_hash FROM {LEAVES_TABLE} WHERE leaf_index >= %s AND leaf_index < %s "
            "ORDER BY leaf_index",
            (start, stop),
        )
        for expected, (index, _) in enumerate(rows, start=start):
            if index != expected:
                raise MissingLeafError(expected, "archived and trimmed, not in the PostgreSQL archive")
        if len(rows) != stop - start:
            raise MissingLeafError(start + len(rows), "archived and trimmed, not in the PostgreSQL archive")
        return [bytes(digest) for _, digest in rows]

    async def leaf_index(self, auction_id: str) -> int | None:
        rows = await self._fetch(f"SELECT leaf_index FROM {INDEX_TABLE} WHERE auction_id = %s", (auction_id,))
        return int(rows[0][0]) if rows else None

    async def _fetch(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        try:
            async with self.store.pool.connection() as conn:
                cursor = await conn.execute(sql, args)
                return list(await cursor.fetchall())
        except (psycopg.Error, TimeoutError) as error:
            raise ArchiveUnavailableError(
                f"PostgreSQL archive read failed: {type(error).__name__}: {error}"
            ) from error
