"""The campaign registry in Redis: create, read (one or many in one round trip), page, update, archive.

Keys (prefix ``mosaic:campaign:``; ``{…}`` is a Redis Cluster hash tag):

``{<id>}``          string: the `Campaign` as JSON, its version included. Every write touches this one
                    key only (one slot): create is ``SET NX``; update and archive are a
                    compare-and-set on the version (the If-Match) under ``WATCH``/``MULTI``, so a
                    write between the read and ``EXEC`` aborts it (412, never a lost update). The
                    budget key of the same campaign, ``mosaic:budget:{<id>}``, shares its slot.
``index``           sorted set id -> created_at_ms: every campaign, in creation order (ties by id).
``owner:{<owner>}`` the same, for one owner's campaigns.
``changes``         stream: one entry ``id=<campaign id>`` per create, update and archive, written after
                    the campaign (approximately the last `CHANGES_MAXLEN`): the change log each
                    gateway's selection catalog follows (app.selection.registry_vectors, issue 34).

The two indexes live in other slots than the campaign, so they are written by separate commands
and kept *eventually consistent*: create adds the id to both (ZADD NX, idempotent) before the
campaign key is written and once more after it. So every campaign that exists is indexed (a listing
never misses one); an index entry whose campaign does not exist (a gateway died between the two
writes) is skipped by listings, and removed by the listing that finds it more than
`DANGLING_GRACE_MS` after its creation time (a create still under way re-adds it after its write).
Reads here go to Redis; the auction's resolver keeps what it read for CAMPAIGN_CACHE_S in `recent`
(`app.campaigns.recent`: entry only, never a charge), which every write of this store drops at once.
Writes go to the ledger's Redis (AOF). Imports redis-py, the settings and the contract's campaign models only;
see docs/DESIGN.md § Campaigns.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import WatchError

from app.campaigns.recent import RecentCampaigns
from app.contract.campaign import STORED, Campaign, CampaignCreate, CampaignPage, CampaignPatch
from app.settings import Settings

PREFIX = "mosaic:campaign:"
INDEX_KEY = PREFIX + "index"
CHANGES_KEY = PREFIX + "changes"
CHANGES_MAXLEN = 100_000
DANGLING_GRACE_MS = 60_000
CAS_RETRIES = 8
# (id, created_at_ms) of index entries; named here because `CampaignStore.list` shadows `list` there.
Entries = list[tuple[str, int]]


class CampaignNotFoundError(LookupError):
    """No campaign with this id (404)."""


class CampaignExistsError(ValueError):
    """A campaign with this id already exists (409)."""


class CampaignVersionError(ValueError):
    """The If-Match version is not the stored one: a lost update refused (412)."""

    def __init__(self, campaign_id: str, expected: int, current: int) -> None:
        super().__init__(f"campaign {campaign_id!r} is at version {current}, not {expected} (If-Match)")
        self.current = current


class CampaignArchivedError(ValueError):
    """An archived campaign is final: no change but another archive (409)."""


class CampaignCursorError(ValueError):
    """A listing cursor this store did not write (422 naming `cursor`)."""


def campaign_key(campaign_id: str) -> str:
    return f"{PREFIX}{{{campaign_id}}}"


def owner_index_key(owner: str) -> str:
    return f"{PREFIX}owner:{{{owner}}}"


# A cursor is the position after which the next page starts: ``<created_at_ms>.<id>``. Clients treat
# it as opaque; any string of this form is a position (so the API's pattern says exactly what it takes).
CURSOR_PATTERN = r"^-?[0-9]{1,16}\.[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
_CURSOR = re.compile(CURSOR_PATTERN)


def encode_cursor(score: int, campaign_id: str) -> str:
    return f"{score}.{campaign_id}"


def decode_cursor(cursor: str) -> tuple[int, str]:
    """(created_at_ms, id) of the last campaign of the previous page."""
    if not _CURSOR.fullmatch(cursor):
        raise CampaignCursorError(f"cursor {cursor[:80]!r} was not written by this API")
    score, campaign_id = cursor.split(".", 1)
    return int(score), campaign_id


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class CampaignStore:
    """The campaign registry over one Redis client (the gateway's, with ``decode_responses``)."""

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        # what the auction's resolver read last (this process; the gateway's routes share this store)
        self.recent = RecentCampaigns(settings.campaign_cache_s)

    async def create(self, body: CampaignCreate, owner: str, now_ms: int | None = None) -> Campaign:
        """Store a new campaign at version 1 (CampaignExistsError when its id is taken)."""
        now_ms = _now_ms() if now_ms is None else now_ms
        campaign_id = body.id or uuid.uuid4().hex
        fields = body.model_dump(exclude={"id", "owner"})
        campaign = Campaign.model_validate(
            {
                **fields,
                "id": campaign_id,
                "owner": owner,
                "version": 1,
                "created_at_ms": now_ms,
                "updated_at_ms": now_ms,
            },
            strict=False,
        )
        added = await self._index(campaign)
        if not await self.redis.set(campaign_key(campaign_id), campaign.model_dump_json(), nx=True):
            if added[1]:  # the owner index entry was ours: another owner's id, nothing to list
                await self.redis.zrem(owner_index_key(owner), campaign_id)
            raise CampaignExistsError(f"campaign {campaign_id!r} already exists")
        await self._index(campaign)  # again: a listing may have removed it as dangling meanwhile
        await self._log_change(campaign_id)
        return campaign

    async def _log_change(self, campaign_id: str) -> None:
        """Note the change in the change log (after the write: a reader of the entry reads the new
        campaign; a gateway dying before this line leaves it to the catalogs' periodic full resync).
        This process's cached read of it is dropped first (`RecentCampaigns.drop`)."""
        self.recent.drop(campaign_id)
        await self.redis.xadd(CHANGES_KEY, {"id": campaign_id}, maxlen=CHANGES_MAXLEN, approximate=True)

    async def _index(self, campaign: Campaign) -> list[int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(INDEX_KEY, {campaign.id: campaign.created_at_ms}, nx=True)
            pipe.zadd(owner_index_key(campaign.owner), {campaign.id: campaign.created_at_ms}, nx=True)
            added: list[int] = await pipe.execute()
        return added

    async def get(self, campaign_id: str) -> Campaign | None:
        return _parse(await self.redis.get(campaign_key(campaign_id)))

    async def get_many(self, campaign_ids: list[str]) -> list[Campaign | None]:
        """Each campaign or None, in order, in ONE round trip (a pipeline of GETs: no MGET, whose keys
        would have to share a cluster slot)."""
        if not campaign_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for campaign_id in campaign_ids:
                pipe.get(campaign_key(campaign_id))
            docs = await pipe.execute()
        return [_parse(doc) for doc in docs]

    async def list(self, owner: str | None, cursor: str | None, limit: int) -> CampaignPage:
        """Up to `limit` campaigns in creation order after `cursor` (all, or one owner's)."""
        index = INDEX_KEY if owner is None else owner_index_key(owner)
        after = decode_cursor(cursor) if cursor is not None else None
        found: list[Campaign] = []
        while len(found) < limit:
            batch = await self._entries_after(index, after, limit - len(found))
            if not batch:
                return CampaignPage(campaigns=found, next_cursor=None)
            campaigns = await self.get_many([campaign_id for campaign_id, _ in batch])
            for (campaign_id, score), campaign in zip(batch, campaigns, strict=True):
                if campaign is None:
                    await self._drop_dangling(index, campaign_id, score)
                elif owner is None or campaign.owner == owner:
                    found.append(campaign)
            after = (batch[-1][1], batch[-1][0])
        if after is None or not await self._entries_after(index, after, 1):
            return CampaignPage(campaigns=found, next_cursor=None)
        return CampaignPage(campaigns=found, next_cursor=encode_cursor(*after))

    async def _entries_after(self, index: str, after: tuple[int, str] | None, count: int) -> Entries:
        """The next `count` (id, created_at_ms) of `index` strictly after (score, id) `after`."""
        if after is None:
            first: Any = await self.redis.zrange(index, 0, count - 1, withscores=True)
            return [(str(member), int(score)) for member, score in first]
        score, last_id = after
        result: Entries = []
        offset = 0
        while len(result) < count:
            # Members of one score are ordered by id: skip those up to `last_id` (few: same millisecond).
            entries: Any = await self.redis.zrange(
                index, score, "+inf", byscore=True, offset=offset, num=count + 16, withscores=True
            )
            offset += len(entries)
            result += [
                (str(member), int(s))
                for member, s in entries
                if int(s) > score or (int(s) == score and str(member) > last_id)
            ]
            if len(entries) < count + 16:
                break
        return result[:count]

    async def _drop_dangling(self, index: str, campaign_id: str, score: int) -> None:
        if score < _now_ms() - DANGLING_GRACE_MS:
            await self.redis.zrem(index, campaign_id)

    async def update(
        self, campaign_id: str, patch: CampaignPatch, if_match: int, now_ms: int | None = None
    ) -> Campaign:
        """Apply `patch` iff the stored version is `if_match` (else CampaignVersionError)."""
        current = await self._current(campaign_id)
        if current.version != if_match:
            raise CampaignVersionError(campaign_id, if_match, current.version)
        changes = patch.changes()
        if current.status == "archived":
            raise CampaignArchivedError(f"campaign {campaign_id!r} is archived: it cannot change")
        if not changes:  # nothing to change: no new version
            return current
        updated = _changed(current, changes, _now_ms() if now_ms is None else now_ms)
        await self._write(updated, if_match)
        return updated

    async def archive(self, campaign_id: str, if_match: int | None, now_ms: int | None = None) -> Campaign:
        """Archive (final; archiving an archived campaign answers it unchanged)."""
        for _ in range(CAS_RETRIES):
            current = await self._current(campaign_id)
            if if_match is not None and current.version != if_match:
                raise CampaignVersionError(campaign_id, if_match, current.version)
            if current.status == "archived":
                return current
            updated = _changed(current, {"status": "archived"}, _now_ms() if now_ms is None else now_ms)
            try:
                await self._write(updated, current.version)
                return updated
            except CampaignVersionError:
                if if_match is not None:
                    raise
        raise CampaignVersionError(campaign_id, current.version, current.version + 1)

    async def _current(self, campaign_id: str) -> Campaign:
        campaign = await self.get(campaign_id)
        if campaign is None:
            raise CampaignNotFoundError(f"campaign {campaign_id!r} not found")
        return campaign

    async def _write(self, updated: Campaign, expected: int) -> None:
        """Store `updated` iff the stored version is still `expected` (WATCH: any write to the key
        between the GET and EXEC aborts the transaction)."""
        key = campaign_key(updated.id)
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(key)
                stored = _parse(await pipe.get(key))
                if stored is None:
                    raise CampaignNotFoundError(f"campaign {updated.id!r} not found")
                if stored.version != expected:
                    raise CampaignVersionError(updated.id, expected, stored.version)
                pipe.multi()
                pipe.set(key, updated.model_dump_json())
                await pipe.execute()
                await self._log_change(updated.id)
            except WatchError:
                current = await self.get(updated.id)
                raise CampaignVersionError(
                    updated.id, expected, current.version if current else expected + 1
                ) from None


def _changed(current: Campaign, changes: dict[str, Any], now_ms: int) -> Campaign:
    """`current` with `changes` (already validated field by field), re-validated as a whole."""
    document = current.model_dump(mode="json")
    document.update(changes)
    document.update(version=current.version + 1, updated_at_ms=max(now_ms, current.updated_at_ms))
    return Campaign.model_validate(document, strict=False)


def parse_stored(doc: str | bytes | None) -> Campaign | None:
    """A campaign as read from its key (`campaign_key`), or None when there is none."""
    return _parse(doc)


def _parse(doc: str | bytes | None) -> Campaign | None:
    if doc is None:
        return None
    try:
        return Campaign.model_validate_json(doc, context=STORED)
    except ValidationError as error:  # written by someone else: a fault naming the key, not a 404
        raise ValueError(f"stored campaign is not a valid Campaign: {error}") from None
