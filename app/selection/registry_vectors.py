"""Campaign embeddings kept with the registry, and each gateway's in-process catalog of campaigns.

Vectors: one Redis hash per campaign, ``mosaic:campaign-vec:{<id>}`` (the campaign's hash tag, so its
slot), fields ``model_id``, ``text_sha`` (sha256 of the embedded text: name, description, targeted
keywords: `campaign_text`) and ``vec`` (float32 little-endian bytes). A vector is computed once per
change of that text: whoever first finds it missing or stale takes a short lock
(``…:lock``, SET NX PX) and embeds and writes it; the other gateways skip the campaign until it appears
(their next refresh: ≤ SELECTION_REFRESH_S later). An archive seen in the change log deletes the vector.

`CampaignCatalog`: what selection reads of every non-archived campaign, in process (id, owner, status,
schedule, targeting, blocked categories, budget limits and time zone for "has budget left", the
frequency cap; never the value scale) plus its vector in a `CampaignIndex`. `refresh` follows the
registry's change log (``mosaic:campaign:changes``, written by app.campaigns.store after every
create, update and archive) and re-reads only the changed campaigns; it loads everything at the first
refresh, when the log was trimmed past it, and every `RESYNC_S` (a gateway that died between a
write and its log entry). `run` refreshes every SELECTION_REFRESH_S (0.5 s: a change is selectable
within a second). Imports redis-py, numpy, the campaign store and models; see docs/DESIGN.md § Selection.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis.asyncio as aioredis

from app.campaigns.store import CHANGES_KEY, INDEX_KEY, CampaignStore
from app.contract.campaign import Campaign, FrequencyCap
from app.selection.embedder import Embedder
from app.selection.index import CampaignIndex
from app.selection.matching import keyword_terms

log = logging.getLogger(__name__)
VEC_PREFIX = "mosaic:campaign-vec:"
LOCK_MS = 30_000
BATCH = 1000
RESYNC_S = 300.0  # full reload period: catches a change whose log entry a dying gateway never wrote


def vector_key(campaign_id: str) -> str:
    return f"{VEC_PREFIX}{{{campaign_id}}}"


def campaign_text(campaign: Campaign) -> str:
    """What is embedded of a campaign: ``name: description``, then its targeted keywords."""
    text = f"{campaign.name}: {campaign.description}"
    keywords = campaign.targeting.keywords
    return f"{text}. {', '.join(keywords)}" if keywords else text


def text_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _as_bytes(value: str | bytes) -> bytes:
    # The gateway's client decodes replies (surrogateescape): the raw bytes come back through it.
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class CatalogEntry:
    """One campaign as selection sees it (no value scale, no budget amounts: only its limits)."""

    id: str
    owner: str
    status: str
    start_ms: int | None
    end_ms: int | None
    keywords: tuple[frozenset[str], ...]
    negatives: tuple[frozenset[str], ...]
    categories: frozenset[str]
    blocked: frozenset[str]
    daily_micro: int | None
    total_micro: int | None
    time_zone: str
    frequency_cap: FrequencyCap | None

    @classmethod
    def of(cls, campaign: Campaign) -> CatalogEntry:
        return cls(
            id=campaign.id,
            owner=campaign.owner,
            status=campaign.status,
            start_ms=campaign.schedule.start_ms(),
            end_ms=campaign.schedule.end_ms(),
            keywords=keyword_terms(campaign.targeting.keywords),
            negatives=keyword_terms(campaign.targeting.negative_keywords),
            categories=frozenset(campaign.targeting.categories),
            blocked=frozenset(campaign.blocked_categories),
            daily_micro=campaign.budget.daily_micro,
            total_micro=campaign.budget.total_micro,
            time_zone=campaign.schedule.time_zone,
            frequency_cap=campaign.frequency_cap,
        )


class VectorStore:
    """The campaign vectors in Redis (module docstring)."""

    def __init__(self, redis: aioredis.Redis, embedder: Embedder) -> None:
        self.redis = redis
        self.embedder = embedder

    async def vectors(self, campaigns: Sequence[Campaign]) -> list[np.ndarray | None]:
        """Each campaign's current vector (this model, this text), computing those missing or stale
        whose lock this process gets; None for those another process is computing."""
        shas = [text_sha(campaign_text(c)) for c in campaigns]
        async with self.redis.pipeline(transaction=False) as pipe:
            for campaign in campaigns:
                pipe.hmget(vector_key(campaign.id), ["model_id", "text_sha", "vec"])
            stored = await pipe.execute()
        out: list[np.ndarray | None] = []
        for campaign, sha, (model_id, have_sha, vec) in zip(campaigns, shas, stored, strict=True):
            if model_id == self.embedder.model_id and have_sha == sha and vec is not None:
                out.append(np.frombuffer(_as_bytes(vec), dtype="<f4").astype(np.float32))
            else:
                out.append(await self._compute(campaign, sha))
        return out

    async def forget(self, campaign_ids: Sequence[str]) -> None:
        """Delete these campaigns' vectors (archived: never selected again)."""
        if campaign_ids:
            async with self.redis.pipeline(transaction=False) as pipe:
                for campaign_id in campaign_ids:
                    pipe.delete(vector_key(campaign_id))
                await pipe.execute()

    async def _compute(self, campaign: Campaign, sha: str) -> np.ndarray | None:
        key = vector_key(campaign.id)
        if not await self.redis.set(f"{key}:lock", sha, nx=True, px=LOCK_MS):
            return None
        try:
            (vector,) = await asyncio.to_thread(self.embedder.embed, [campaign_text(campaign)])
            fields = {
                "model_id": self.embedder.model_id,
                "text_sha": sha,
                "vec": vector.astype("<f4").tobytes(),
            }
            await self.redis.hset(key, mapping=fields)  # type: ignore[arg-type]
            return np.asarray(vector, dtype=np.float32)
        finally:
            await self.redis.delete(f"{key}:lock")


class CampaignCatalog:
    """The gateway's copy of every non-archived campaign and its vector (module docstring)."""

    def __init__(
        self, store: CampaignStore, vectors: VectorStore, index: CampaignIndex, resync_s: float = RESYNC_S
    ) -> None:
        self.store = store
        self.vector_store = vectors
        self.index = index
        self.resync_s = resync_s
        self.entries: dict[str, CatalogEntry] = {}
        self.postings: dict[str, frozenset[str]] = {}  # a keyword's first word → campaigns targeting it
        self._last_id: str | None = None
        self._pending: set[str] = set()  # vectors another process was computing: read them again
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Bring the catalog up to the registry (module docstring)."""
        async with self._lock:
            if self._last_id is None or time.monotonic() - self._loaded_at >= self.resync_s:
                await self._full_load()
                return
            changed, complete = await self._changes()
            if not complete:
                await self._full_load()
                return
            await self._apply(sorted(changed | self._pending), full=False)

    async def _changes(self) -> tuple[set[str], bool]:
        """Changed ids since the last read, and whether the log still held everything since then."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xrange(CHANGES_KEY, min="-", max="+", count=1)
            pipe.xrange(CHANGES_KEY, min=f"({self._last_id}", max="+", count=10 * BATCH)
            first, entries = await pipe.execute()
        if first and self._last_id != "0-0" and _stream_id(first[0][0]) > _stream_id(str(self._last_id)):
            return set(), False  # trimmed past our position: entries were lost
        if len(entries) == 10 * BATCH:
            return set(), False  # a burst of changes: loading everything is cheaper
        if entries:
            self._last_id = entries[-1][0]
        return {fields["id"] for _, fields in entries if "id" in fields}, True

    @property
    def redis(self) -> aioredis.Redis:
        return self.store.redis

    async def _full_load(self) -> None:
        last: Any = await self.redis.xrevrange(CHANGES_KEY, count=1)
        self._last_id = str(last[0][0]) if last else "0-0"  # read before the campaigns: none is missed
        ids = [str(member) for member in await self.redis.zrange(INDEX_KEY, 0, -1)]
        await self._apply(ids, full=True)
        self._loaded_at = time.monotonic()

    async def _apply(self, ids: list[str], full: bool) -> None:
        entries = {} if full else dict(self.entries)
        upserts: dict[str, np.ndarray] = {}
        removals: set[str] = set()
        pending: set[str] = set()
        for start in range(0, len(ids), BATCH):
            chunk = ids[start : start + BATCH]
            found = await self.store.get_many(chunk)
            live = [c for c in found if c is not None and c.status != "archived"]
            removals |= set(chunk) - {c.id for c in live}
            if not full:  # an archive seen in the log: its vector is no longer needed (1.6 KB each)
                await self.vector_store.forget(
                    [c.id for c in found if c is not None and c.status == "archived"]
                )
            for campaign, vector in zip(live, await self.vector_store.vectors(live), strict=True):
                if vector is None:
                    pending.add(campaign.id)
                    removals.add(campaign.id)
                    continue
                entries[campaign.id] = CatalogEntry.of(campaign)
                upserts[campaign.id] = vector
        for campaign_id in removals:
            entries.pop(campaign_id, None)
        if full and len(self.index):  # a resync: only what differs goes to the index
            removals = set(self.index.ids() - upserts.keys())
            upserts = {cid: v for cid, v in upserts.items() if not _same(self.index.vector(cid), v)}
        # In a thread: a first build of a large HNSW base takes seconds; later ones run in the index's own.
        await asyncio.to_thread(
            self.install,
            entries,
            upserts,
            None if full and not len(self.index) else removals,
            None if full else ids,
        )
        self._pending = pending

    def install(
        self,
        entries: dict[str, CatalogEntry],
        upserts: dict[str, np.ndarray],
        removals: set[str] | None,
        changed: Sequence[str] | None = None,
    ) -> None:
        """Swap in `entries` with the index changed by `upserts`/`removals` (None: replaced by
        `upserts`) and the keyword postings of the `changed` ids (None: all rebuilt, ~0.4 s at 100k);
        the entries and postings dicts are replaced, never changed in place."""
        if removals is None:
            self.index.replace_all(upserts)
        else:
            self.index.update(upserts, removals)
        if changed is None:
            self.postings = _postings(entries.values())
        else:
            self.postings = _repost(
                self.postings, [self.entries.get(c) for c in changed], [entries.get(c) for c in changed]
            )
        self.entries = entries

    async def run(self, interval_s: float) -> None:
        """Refresh every `interval_s` until cancelled (a failed refresh is logged and retried)."""
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("campaign catalog refresh failed; retrying")
            await asyncio.sleep(interval_s)


def _same(old: np.ndarray | None, new: np.ndarray) -> bool:
    return old is not None and np.array_equal(old, new)


def _stream_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def _postings(entries: Iterable[CatalogEntry]) -> dict[str, frozenset[str]]:
    """Each keyword's smallest word → the campaigns targeting it (a query has that word when it
    matches the keyword, so looking up each query word finds every keyword hit)."""
    postings: dict[str, set[str]] = {}
    for entry in entries:
        for term in entry.keywords:
            postings.setdefault(min(term), set()).add(entry.id)
    return {word: frozenset(ids) for word, ids in postings.items()}


def _repost(
    postings: dict[str, frozenset[str]], old: list[CatalogEntry | None], new: list[CatalogEntry | None]
) -> dict[str, frozenset[str]]:
    """`postings` with the old entries' keywords taken out and the new ones' put in (a copy)."""
    out = dict(postings)
    for entry in old:
        if entry is None:
            continue
        for word in {min(term) for term in entry.keywords}:
            remaining = out.get(word, frozenset()) - {entry.id}
            if remaining:
                out[word] = remaining
            else:
                out.pop(word, None)
    for word, ids in _postings(e for e in new if e is not None).items():
        out[word] = out.get(word, frozenset()) | ids
    return out
