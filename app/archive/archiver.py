"""The archiver: audit records leave Redis for PostgreSQL, at least once, never lost.

Job: `Archiver.archive_once` takes the oldest ARCHIVE_BATCH entries of the archive queue
(`ARCHIVE_QUEUE_KEY`: record key -> ms queued, written in the record's own atomic write by
app.ledger.producer) at least ARCHIVE_MIN_AGE_S old, reads their records (MGET), writes them to
PostgreSQL in one committed transaction (`ArchiveStore.write`: ON CONFLICT DO NOTHING), and only THEN
removes them from Redis (one MULTI: ZREM from the queue, DEL the record). A process killed anywhere
loses nothing (before the commit Redis still holds every record; after it, PostgreSQL does) and
duplicates nothing (the next pass writes the same rows again: conflicts, stored once; then drops them).
A queued key whose record expired (AUDIT_TTL_S passed before archiving) is dropped from the queue and
counted. Each pass also archives a batch of the billing stream (app.archive.events: the ledger's
history) and one of the transparency log's leaves and index (app.archive.tlog). Only the holder of
the lease (app.archive.lease) works. `run` loops until stopped, with retention
(ARCHIVE_RETENTION_DAYS) once an hour. Imports redis, app.archive (store, schema, events,
lease, observers, tlog), app.ledger.keys and app.settings. See docs/DESIGN.md § Archive.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from app.archive.events import EventArchiver
from app.archive.lease import ArchiveLease
from app.archive.observers import ArchiveObserver, NoopArchiveObserver
from app.archive.schema import EVENTS_TABLE, RECORDS_TABLE, drop_before
from app.archive.store import ArchiveStore, ArchiveUnavailableError, archived_record
from app.archive.tlog import LeafArchiver
from app.ledger.keys import archive_queue_key, as_str, hot_tag
from app.ledger.tlog import log_keys_for
from app.settings import Settings

logger = logging.getLogger(__name__)
RETENTION_EVERY_S = 3600.0


@dataclass
class ArchiverStats:
    archived: int = 0  # records written (new) to PostgreSQL
    repeated: int = 0  # records found already archived (a pass after a kill)
    expired: int = 0  # queued records gone before archiving (AUDIT_TTL_S)
    batches: int = 0
    errors: list[str] = field(default_factory=list)


class Archiver:
    """Drains the archive queue into PostgreSQL (see the module docstring)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        store: ArchiveStore,
        settings: Settings,
        observer: ArchiveObserver | None = None,
    ) -> None:
        self.redis = redis
        self.store = store
        self.settings = settings
        self.observer: ArchiveObserver = observer or NoopArchiveObserver()
        self.stats = ArchiverStats()
        self.events = EventArchiver(redis, store, settings)
        self.leaves = LeafArchiver(redis, store, settings.archive_batch, log_keys_for(hot_tag(settings)))
        self.lease = ArchiveLease(redis, settings.archive_lease_s)

    async def archive_once(self) -> int:
        """One batch; returns how many queue entries it settled (0: nothing due)."""
        cutoff_ms = int((time.time() - self.settings.archive_min_age_s) * 1000)
        queued = await self.redis.zrangebyscore(
            archive_queue_key(self.settings),
            "-inf",
            cutoff_ms,
            start=0,
            num=self.settings.archive_batch,
            withscores=True,
        )
        if not queued:
            return 0
        pairs = cast(list[tuple[Any, float]], queued)
        keys = [as_str(member) for member, _ in pairs]
        values = await self.redis.mget(keys)
        rows, gone = [], 0
        for key, (_, score), raw in zip(keys, pairs, values, strict=True):
            if raw is None:
                gone += 1
                continue
            rows.append(archived_record(key.rsplit(":", 1)[-1], as_str(raw), int(score)))
        new = await self.store.write(rows)  # committed: from here PostgreSQL holds them
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(archive_queue_key(self.settings), *keys)
            pipe.delete(*keys)
            await pipe.execute()
        self.stats.archived += new
        self.stats.repeated += len(rows) - new
        self.stats.expired += gone
        if gone:
            logger.warning("%d queued audit records expired before archiving (AUDIT_TTL_S): lost", gone)
        self.stats.batches += 1
        self.observer.archive_batch("records", new, len(rows) - new, gone)
        return len(keys)

    async def drain(self) -> int:
        """Batches until nothing is due; returns the entries settled."""
        total = 0
        while settled := await self.archive_once():
            total += settled
        return total

    async def retention(self) -> list[str]:
        """Drop the records' and events' partitions older than ARCHIVE_RETENTION_DAYS (none when 0)."""
        days = self.settings.archive_retention_days
        if days <= 0:
            return []
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
        async with self.store.pool.connection() as conn:
            return [
                *await drop_before(conn, cutoff, RECORDS_TABLE),
                *await drop_before(conn, cutoff, EVENTS_TABLE),
            ]

    async def pass_once(self, state: dict[str, float]) -> int:
        """One pass: the events' group (once), retention (hourly), a batch of records and one of events;
        returns the larger batch settled (0 while another archiver holds the lease)."""
        if not await self.lease.hold():
            return 0
        if not state.get("schema"):  # once per process: never write into an older schema
            await self.store.check_schema()
            state["schema"] = 1
        if not state.get("group"):
            await self.events.ensure_group()
            state["group"] = 1
        if time.monotonic() >= state.get("retention", 0.0):
            dropped = await self.retention()
            if dropped:
                logger.info("archive retention dropped %s", dropped)
            state["retention"] = time.monotonic() + RETENTION_EVERY_S
        await self._observe_queue()
        records = await self.archive_once()
        events_before = self.events.archived
        events = await self.events.archive_once()
        if events:
            new = self.events.archived - events_before
            self.observer.archive_batch("events", new, events - new, 0)
        leaves = await self.leaves.archive_once()  # the transparency log's (app.archive.tlog)
        if leaves:
            self.observer.archive_batch("leaves", leaves, 0, 0)
        return max(records, events, leaves)

    async def _observe_queue(self) -> None:
        depth = await self.redis.zcard(archive_queue_key(self.settings))
        oldest = await self.redis.zrange(archive_queue_key(self.settings), 0, 0, withscores=True)
        age_s = max(0.0, time.time() - float(oldest[0][1]) / 1000) if oldest else 0.0
        self.observer.archive_queue(int(depth), age_s)

    async def run(self, stop: asyncio.Event) -> None:
        """Archive until `stop`; a Redis or PostgreSQL fault is logged and retried after the interval."""
        state: dict[str, float] = {}
        while not stop.is_set():
            settled = 0
            try:
                settled = await self.pass_once(state)
            except (RedisError, OSError, ArchiveUnavailableError, Exception) as error:  # any fault: retried
                message = f"{type(error).__name__}: {error}"
                self.stats.errors = [*self.stats.errors[-9:], message]
                logger.warning("archiver pass failed, retrying: %s", message)
                self.observer.archive_failed(type(error).__name__)
            if settled < self.settings.archive_batch:  # a full batch: more may be due at once
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.settings.archive_interval_s)
        with contextlib.suppress(RedisError, OSError):
            await self.lease.release()
