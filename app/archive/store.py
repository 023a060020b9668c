"""The archive's PostgreSQL side: a connection pool, batched idempotent writes, reads.

Job: `ArchiveStore` opens a psycopg 3 `AsyncConnectionPool` on ARCHIVE_DSN (ARCHIVE_POOL_MAX
connections), writes a batch of `ArchivedRecord`s in ONE transaction (the day partitions it needs,
then `INSERT ... ON CONFLICT DO NOTHING`: a record archived twice is stored once), and reads a record
by auction id or an advertiser's auctions by time. `archived_record` turns a Redis record (its exact
JSON text) into a row, `archived_event` a billing stream entry (app.archive.events). Imports psycopg,
psycopg_pool, app.archive.schema and the standard library.
See docs/DESIGN.md § Archive.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from app.archive.schema import EVENTS_TABLE, RECORDS_TABLE, ensure_days, migrations, schema_version


class ArchiveUnavailableError(RuntimeError):
    """PostgreSQL could not be reached or refused a statement (the read answers 503, the archiver retries)."""


MAX_MS = 253_402_300_800_000  # year 10000
POOL_WAIT_S = 5.0  # longest wait for a connection: then ArchiveUnavailableError (a read answers 503)


def _named(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class ArchiveSchemaError(ArchiveUnavailableError):
    """The database's schema is older than this code: `mosaic archive migrate` first."""


@dataclass(frozen=True)
class ArchivedRecord:
    auction_id: str
    created_at: dt.datetime
    advertiser_ids: tuple[str, ...]
    record: str  # the exact JSON text Redis held


def archived_record(auction_id: str, raw: str, fallback_ms: int) -> ArchivedRecord:
    """The row of one Redis record: its day is the record's `created_at_ms` (`fallback_ms`, the time it
    was queued, for a record without one); unreadable JSON is archived as it is, with no advertisers."""
    created_ms, advertisers = fallback_ms, tuple[str, ...]()
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        stamp = parsed.get("created_at_ms")
        if type(stamp) is int and 0 <= stamp < MAX_MS:  # not a bool, within datetime's range
            created_ms = stamp
        rows = parsed.get("advertisers") or []
        advertisers = tuple(str(row["id"]) for row in rows if isinstance(row, dict) and "id" in row)
    created = dt.datetime.fromtimestamp(created_ms / 1000, tz=dt.UTC)
    return ArchivedRecord(auction_id, created, advertisers, raw)


@dataclass(frozen=True)
class ArchivedEvent:
    stream_id: str
    created_at: dt.datetime
    auction_id: str
    advertiser_ids: tuple[str, ...]
    fields: dict[str, str]


def archived_event(stream_id: str, fields: dict[str, str]) -> ArchivedEvent:
    """The row of one stream entry: its day is the stream id's ms; a malformed entry (dead-lettered by
    the ledger) is archived as it is."""
    created = dt.datetime.fromtimestamp(int(stream_id.split("-", 1)[0]) / 1000, tz=dt.UTC)
    try:
        payments = json.loads(fields.get("payments", "{}"))
    except ValueError:
        payments = {}
    advertisers = tuple(sorted(str(a) for a in payments)) if isinstance(payments, dict) else ()
    return ArchivedEvent(stream_id, created, fields.get("auction_id", ""), advertisers, fields)


class ArchiveStore:
    """The archive's tables through one pool (open with `open`, close with `close`)."""

    def __init__(self, dsn: str, pool_max: int = 4) -> None:
        self.pool = AsyncConnectionPool(dsn, min_size=1, max_size=pool_max, open=False, timeout=POOL_WAIT_S)

    async def open(self, require_schema: bool = True) -> None:
        """Open the pool; with `require_schema`, refuse a database whose schema is older than this code
        (ArchiveSchemaError: run `mosaic archive migrate`). PostgreSQL unreachable: ArchiveUnavailableError,
        the pool stays open and keeps trying (a gateway serves on; `check_schema` runs again later)."""
        await self.pool.open(wait=False)  # its worker connects (and reconnects) in the background
        if require_schema:
            await self.check_schema()

    async def check_schema(self) -> None:
        """Raise ArchiveSchemaError when the schema is older than this code's migrations."""
        try:
            async with self.pool.connection() as conn:
                have, want = await schema_version(conn), len(migrations())
        except (psycopg.Error, TimeoutError) as error:
            raise ArchiveUnavailableError(f"PostgreSQL archive unreachable: {_named(error)}") from error
        if have < want:
            raise ArchiveSchemaError(
                f"archive schema is at version {have}, this code needs {want}: run `mosaic archive migrate`"
            )

    async def close(self) -> None:
        await self.pool.close()

    async def write(self, rows: list[ArchivedRecord]) -> int:
        """Store `rows` in one transaction (their day partitions created first); returns how many were
        new (the others were archived before: left as they are)."""
        if not rows:
            return 0
        async with self.pool.connection() as conn, conn.transaction():
            await ensure_days(conn, {row.created_at.date() for row in rows})
            async with conn.cursor() as cursor:
                await cursor.executemany(
                    f"INSERT INTO {RECORDS_TABLE} (auction_id, created_at, advertiser_ids, record) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    [(r.auction_id, r.created_at, list(r.advertiser_ids), r.record) for r in rows],
                    returning=False,
                )
                return max(cursor.rowcount, 0)

    async def write_events(self, rows: list[ArchivedEvent]) -> int:
        """Store billing stream entries in one transaction (as `write`); returns how many were new."""
        if not rows:
            return 0
        async with self.pool.connection() as conn, conn.transaction():
            await ensure_days(conn, {row.created_at.date() for row in rows}, EVENTS_TABLE)
            async with conn.cursor() as cursor:
                await cursor.executemany(
                    f"INSERT INTO {EVENTS_TABLE} (stream_id, created_at, auction_id, advertiser_ids, fields) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    [
                        (r.stream_id, r.created_at, r.auction_id, list(r.advertiser_ids), Jsonb(r.fields))
                        for r in rows
                    ],
                    returning=False,
                )
                return max(cursor.rowcount, 0)

    async def record(self, auction_id: str) -> str | None:
        """The archived JSON text of an auction, or None."""
        try:
            async with self.pool.connection() as conn:
                cursor = await conn.execute(
                    f"SELECT record FROM {RECORDS_TABLE} WHERE auction_id = %s LIMIT 1", (auction_id,)
                )
                row = await cursor.fetchone()
        except (psycopg.Error, TimeoutError) as error:
            raise ArchiveUnavailableError(f"PostgreSQL archive read failed: {_named(error)}") from error
        return None if row is None else str(row[0])

    async def archived_records(
        self, since_ms: int | None, batch: int = 1000
    ) -> AsyncIterator[tuple[str, str]]:
        """(auction id, exact text) of every archived record created at or after `since_ms` (all when
        None), read by a server-side cursor in batches (app.ledger.reconcile_audit.ArchivedRecords)."""
        since = dt.datetime.fromtimestamp((since_ms or 0) / 1000, tz=dt.UTC)
        async with (
            self.pool.connection() as conn,
            conn.transaction(),
            conn.cursor(name="archived_records") as cursor,
        ):
            await cursor.execute(
                f"SELECT auction_id, record FROM {RECORDS_TABLE} WHERE created_at >= %s", (since,)
            )
            while rows := await cursor.fetchmany(batch):
                for auction_id, record in rows:
                    yield str(auction_id), str(record)

    async def archived_count_before(self, before_ms: int) -> int:
        """How many archived records were created before `before_ms`."""
        before = dt.datetime.fromtimestamp(before_ms / 1000, tz=dt.UTC)
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                f"SELECT count(*) FROM {RECORDS_TABLE} WHERE created_at < %s", (before,)
            )
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def by_advertiser(self, advertiser_id: str, limit: int = 100) -> list[str]:
        """The ids of the latest `limit` archived auctions `advertiser_id` took part in, newest first."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                f"SELECT auction_id FROM {RECORDS_TABLE} WHERE advertiser_ids @> ARRAY[%s]::text[] "
                "ORDER BY created_at DESC LIMIT %s",
                (advertiser_id, limit),
            )
            return [str(row[0]) for row in await cursor.fetchall()]

    async def count(self) -> int:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(f"SELECT count(*) FROM {RECORDS_TABLE}")
            row = await cursor.fetchone()
        return int(row[0]) if row else 0
