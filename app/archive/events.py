"""The ledger's history in PostgreSQL: the billing stream archived by its own consumer group.

Job: `EventArchiver` reads the billing stream (BILLING_STREAM) as the consumer group ``archive``
(created at the stream's start, so everything still in the stream is archived): first the entries
this group holds pending (read before a kill, never acknowledged), then new ones; writes them in one
committed transaction (`ArchiveStore.write_events`: ON CONFLICT DO NOTHING) and only then XACKs them.
The ledger's trim (trim.lua) removes an entry only once every group has acknowledged it, so an entry is
never trimmed before it is archived, and a kill anywhere loses and duplicates nothing. Only with
ARCHIVE_DSN (the group exists only then: without an archiver it would hold the trim back). Imports
redis, app.archive.store, app.ledger.keys and app.settings. See docs/DESIGN.md § Archive.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from app.archive.store import ArchiveStore, archived_event
from app.ledger.keys import as_str, decode_fields, stream_key
from app.settings import Settings

ARCHIVE_GROUP = "archive"
ARCHIVE_CONSUMER = "archiver"  # one name for every archiver: a restarted one re-reads what was pending


class EventArchiver:
    """Drains the billing stream's ``archive`` group into PostgreSQL (see the module docstring)."""

    def __init__(self, redis: aioredis.Redis, store: ArchiveStore, settings: Settings) -> None:
        self.redis = redis
        self.store = store
        self.stream = stream_key(settings)
        self.batch = settings.archive_batch
        self.archived = 0

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, ARCHIVE_GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def _read(self, start: str) -> list[tuple[str, dict[str, str] | None]]:
        reply: Any = await self.redis.xreadgroup(
            ARCHIVE_GROUP, ARCHIVE_CONSUMER, {self.stream: start}, count=self.batch
        )
        entries = reply[0][1] if reply else []
        return [(as_str(entry_id), decode_fields(fields) if fields else None) for entry_id, fields in entries]

    async def archive_once(self) -> int:
        """One batch (pending first, then new entries); returns how many entries it acknowledged. A
        pending entry deleted meanwhile (XDEL: no fields) is acknowledged with nothing to archive."""
        entries = await self._read("0") or await self._read(">")
        if not entries:
            return 0
        rows = [archived_event(i, f) for i, f in entries if f is not None]
        new = await self.store.write_events(rows)  # committed: from here PostgreSQL holds them
        await self.redis.xack(self.stream, ARCHIVE_GROUP, *(i for i, _ in entries))
        self.archived += new
        return len(entries)
