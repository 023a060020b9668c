"""The archive's processes: `mosaic archive migrate | run | retention` (and `python -m app.archive`).

Job: `migrate_command` applies the pending SQL migrations to ARCHIVE_DSN; `run_forever` runs one
`Archiver` until SIGTERM/SIGINT (the current batch finishes: a SIGKILL is safe too, see
app.archive.archiver); `retention_command` drops the day partitions older than N days once;
`archived_records` opens the archive for `mosaic ledger reconcile`. Each
opens Redis (app.ledger.redis_store) and PostgreSQL itself. Imports app.archive, app.ledger.redis_store,
app.logging_setup and app.settings. See docs/DESIGN.md § Archive.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import signal
from collections.abc import AsyncIterator, Sequence

import psycopg

from app.archive.archiver import Archiver
from app.archive.schema import drop_before, migrate
from app.archive.store import ArchiveStore
from app.ledger.redis_store import open_redis
from app.settings import Settings

logger = logging.getLogger(__name__)


class ArchiveNotConfiguredError(RuntimeError):
    """ARCHIVE_DSN is empty: there is no archive to act on."""


def _dsn(settings: Settings) -> str:
    if not settings.archive_dsn:
        raise ArchiveNotConfiguredError("ARCHIVE_DSN is empty: set it to the archive's PostgreSQL DSN")
    return settings.archive_dsn


async def _migrate(settings: Settings) -> list[str]:
    async with await psycopg.AsyncConnection.connect(_dsn(settings), autocommit=True) as conn:
        return await migrate(conn)


@contextlib.asynccontextmanager
async def archived_records(settings: Settings) -> AsyncIterator[ArchiveStore]:
    """The archive, open for `mosaic ledger reconcile` (its archived records: app.ledger.reconcile_audit)."""
    store = ArchiveStore(_dsn(settings), settings.archive_pool_max)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def migrate_command(settings: Settings) -> list[str]:
    """`mosaic archive migrate`: the migrations applied now (none when the schema is current)."""
    return asyncio.run(_migrate(settings))


async def _retention(settings: Settings, days: int) -> list[str]:
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
    async with await psycopg.AsyncConnection.connect(_dsn(settings), autocommit=True) as conn:
        return await drop_before(conn, cutoff)


def retention_command(settings: Settings, days: int) -> list[str]:
    """`mosaic archive retention --days N`: the partitions dropped (every day ended N days ago)."""
    if days < 1:
        raise ValueError("--days must be at least 1")
    return asyncio.run(_retention(settings, days))


async def _run(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    store = ArchiveStore(_dsn(settings), settings.archive_pool_max)
    await store.open()
    handle = await open_redis(settings)
    try:
        logger.info("archiver started on %s", handle.url)
        await Archiver(handle.client, store, settings).run(stop)
    finally:
        await handle.close()
        await store.close()


def run_forever(settings: Settings) -> None:
    """`mosaic archive run`: archive until SIGTERM/SIGINT."""
    from app.logging_setup import configure_logging

    configure_logging(settings)
    asyncio.run(_run(settings))


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m app.archive [migrate|run|retention --days N]` (settings from the environment)."""
    parser = argparse.ArgumentParser(prog="python -m app.archive")
    parser.add_argument("action", choices=["migrate", "run", "retention"])
    parser.add_argument("--days", type=int, default=0)
    args = parser.parse_args(argv)
    settings = Settings()
    if args.action == "migrate":
        print("applied:", migrate_command(settings) or "nothing (schema current)")
    elif args.action == "retention":
        print("dropped:", retention_command(settings, args.days) or "nothing")
    else:
        run_forever(settings)
