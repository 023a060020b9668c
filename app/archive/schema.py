"""The archive's schema: plain versioned SQL migrations, day partitions, retention by dropping them.

Job: `migrate` applies the files `migrations/NNNN_name.sql` not yet recorded in
`archive_schema_migrations`, each in its own transaction, under an advisory lock (two processes
migrating at once apply each file once); `ensure_days` creates the day partitions a batch needs
(`archive_ensure_day`, defined by the first migration); `drop_before` drops every partition whose day
ended before a cutoff (retention: whole partitions, no DELETE). Imports psycopg and the standard
library only. See docs/DESIGN.md § Archive.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

RECORDS_TABLE = "auction_records"
EVENTS_TABLE = "billing_events"
MIGRATIONS_TABLE = "archive_schema_migrations"
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_PARTITION = re.compile(r"^(?P<table>[a-z_]+)_p(?P<day>\d{8})$")
_LOCK = "hashtext('archive_migrate')"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """The repository's migrations, by version (names `NNNN_what.sql`; a gap or a duplicate refused)."""
    found: list[Migration] = []
    for entry in resources.files("app.archive").joinpath("migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        names = [m.name for m in found]
        raise RuntimeError(f"archive migrations must be numbered 1..n without gaps: {names}")
    return found


async def migrate(conn: psycopg.AsyncConnection) -> list[str]:
    """Apply the pending migrations (each in one transaction); returns the names applied now."""
    applied_now: list[str] = []
    await conn.set_autocommit(True)
    await conn.execute(f"SELECT pg_advisory_lock({_LOCK})")
    try:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (version integer PRIMARY KEY, "
            "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cursor = await conn.execute(f"SELECT version FROM {MIGRATIONS_TABLE}")
        done = {row[0] for row in await cursor.fetchall()}
        for migration in migrations():
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql.encode())
                await conn.execute(
                    f"INSERT INTO {MIGRATIONS_TABLE} (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
            applied_now.append(migration.name)
    finally:
        await conn.execute(f"SELECT pg_advisory_unlock({_LOCK})")
    return applied_now


async def schema_version(conn: psycopg.AsyncConnection) -> int:
    """The highest migration applied (0: none), so a process can refuse a schema older than its code."""
    cursor = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (MIGRATIONS_TABLE,))
    row = await cursor.fetchone()
    if not row or not row[0]:
        return 0
    cursor = await conn.execute(f"SELECT coalesce(max(version), 0) FROM {MIGRATIONS_TABLE}")
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def ensure_days(conn: psycopg.AsyncConnection, days: set[dt.date], table: str = RECORDS_TABLE) -> None:
    """The partitions of `days` exist afterwards (created in the caller's transaction if missing)."""
    for day in sorted(days):
        await conn.execute("SELECT archive_ensure_day(%s, %s)", (table, day))


async def partitions(conn: psycopg.AsyncConnection, table: str = RECORDS_TABLE) -> list[tuple[str, dt.date]]:
    """The day partitions of `table`: (name, day), oldest first."""
    cursor = await conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = %s",
        (table,),
    )
    found = []
    for (name,) in await cursor.fetchall():
        match = _PARTITION.match(name)
        if match and match.group("table") == table:
            found.append((name, dt.datetime.strptime(match.group("day"), "%Y%m%d").date()))
    return sorted(found, key=lambda pair: pair[1])


async def drop_before(
    conn: psycopg.AsyncConnection, cutoff: dt.datetime, table: str = RECORDS_TABLE
) -> list[str]:
    """Drop every partition of `table` whose whole day lies before `cutoff` (UTC); returns their names."""
    dropped = []
    for name, day in await partitions(conn, table):
        day_end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
        if day_end <= cutoff:
            async with conn.transaction():
                await conn.execute(f'DROP TABLE IF EXISTS "{name}"')
            dropped.append(name)
    return dropped
