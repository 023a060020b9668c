"""The exactly-once ledger consumer: applies the billing stream, read in a consumer group.

Job: `LedgerConsumer`, one member of the group BILLING_GROUP, embedded in ``mosaic serve`` or run
on its own by app.ledger.commands (``mosaic ledger consume``, ``python -m app.ledger``); safe to run
several and to kill at any point (the batch cycle, and why a crash anywhere is safe:
app/ledger/__init__.py and docs/DESIGN.md § Billing). Imports app.settings and app.ledger (events,
keys, budget, render, scripts) only.

Outcomes of an event: ``applied``; ``redelivered`` (this same stream entry was applied before, e.g.
the consumer died between the apply and XACK); ``duplicate`` (same auction id and payload in a second
stream entry: a producer retry); ``conflict`` (same auction id, different payload: recorded and
dead-lettered at once, never applied, nothing overwritten); ``invalid`` (malformed: left pending,
retried through XAUTOCLAIM, dead-lettered with the reason when its delivery count reaches
BILLING_MAX_DELIVERIES). Nothing is dropped silently. With BILLING_MODE=render it also expires the
pending charges whose RENDER_WINDOW_S passed (app.ledger.render; a rendered charge reaches it as a
stream entry like any other), about once a second (voiding their campaign budget reservations).
Campaign budgets: an event's reservations are posted (app.ledger.budget, idempotent) in the applies'
MULTI (on a Redis Cluster in a pipeline beside it: budget keys are in their campaigns' slots, each post
atomic on its key), one call per campaign and step: the step of an event billed at once makes this post
final, once per auction; a rendered charge's event has none (the gateway posts it at render). It is
posted whatever the apply's outcome (a dead-lettered event's reply was shown: spent all the same;
reconcile reports it). Frequency caps: posted after the apply, before the XACK (app.ledger.frequency).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from app.ledger.budget import BudgetLedger, group_posts
from app.ledger.cluster import write_and_wait
from app.ledger.events import MalformedEventError, StreamEvent, parse_entry
from app.ledger.keys import LedgerKeys, as_str, dead_stream_key, decode_fields, stream_key
from app.ledger.render import RenderLedger
from app.ledger.scripts import APPLY_SCRIPT, DEAD_LETTER_SCRIPT
from app.settings import Settings

logger = logging.getLogger(__name__)

RENDER_EXPIRY_SWEEP_S = 1.0
DELETED_REASON = "deleted from the stream (trimmed or XDEL) before it was applied"


def _entry_json(fields: Mapping[str, str]) -> str:
    return json.dumps(dict(fields), sort_keys=True, ensure_ascii=False)


@dataclass
class _Pending:
    """One entry of the current batch and what happened to it."""

    stream_id: str
    fields: dict[str, str]
    event: StreamEvent | None = None
    outcome: str = ""
    detail: str = ""


def _parsed(entry_id: str, fields: Any) -> _Pending:
    """One read entry, its event parsed; a deleted (fieldless) or malformed one gets its outcome now."""
    item = _Pending(stream_id=entry_id, fields=decode_fields(fields))
    if not item.fields:  # an entry always has fields: this one was deleted while pending
        item.outcome, item.detail = "deleted", DELETED_REASON
    else:
        try:
            item.event = parse_entry(entry_id, item.fields)
        except MalformedEventError as error:
            item.outcome, item.detail = "invalid", str(error)
    return item


class LedgerConsumer:
    """One member of the ledger consumer group. Safe to run several, and to kill at any point."""

    def __init__(
        self, redis: aioredis.Redis, settings: Settings, name: str, linger_s: float = 0.0, shard: int = 0
    ) -> None:
        self.redis, self.settings, self.name = redis, settings, name
        self.linger_s = linger_s  # pause between a read and its apply (the embedded consumer)
        self.keys = LedgerKeys.of(settings, shard)  # on a cluster: the ledger shard's tagged keys
        self.stream, self.dead_stream = stream_key(settings, shard), dead_stream_key(settings, shard)
        self._apply_sha: str | None = None
        self._dead_sha: str | None = None
        self._claim_cursor = "0-0"
        self._next_claim_at = 0.0  # time.monotonic() of the next XAUTOCLAIM scan
        self._next_expiry_at = 0.0  # time.monotonic() of the next sweep of pending render charges
        self.budget = BudgetLedger(redis, settings)
        self.render = RenderLedger(redis, settings, self.budget)
        # On start, first re-read this consumer's own pending entries (it may have died mid-batch).
        self._own_pending_cursor: str | None = "0-0"
        self.stats: dict[str, int] = defaultdict(int)

    async def ensure_group(self) -> None:
        """Create the stream and the group (from the first entry) if missing; load the scripts."""
        try:
            await self.redis.xgroup_create(self.stream, self.settings.billing_group, id="0", mkstream=True)
            logger.info("created consumer group %s on %s", self.settings.billing_group, self.stream)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        await self._load_scripts()

    async def _load_scripts(self) -> tuple[str, str]:
        """SCRIPT LOAD both scripts (at start, and again after NOSCRIPT: a restarted Redis forgets them)."""
        apply_sha = as_str(await self.redis.script_load(APPLY_SCRIPT))
        dead_sha = as_str(await self.redis.script_load(DEAD_LETTER_SCRIPT))
        self.budget._sha = None
        await self.budget.sha()
        self._apply_sha, self._dead_sha = apply_sha, dead_sha
        return apply_sha, dead_sha

    # reading ------------------------------------------------------------------------------------

    async def _read(self, stream_id: str, count: int, block_ms: int | None) -> list[tuple[str, Any]]:
        reply = await self.redis.xreadgroup(
            self.settings.billing_group,
            self.name,
            {self.stream: stream_id},
            count=count,
            block=block_ms,
        )
        entries: list[tuple[str, Any]] = []
        if not reply:
            return entries
        raw: Any = reply
        streams = raw.values() if isinstance(raw, dict) else [stream_entries for _name, stream_entries in raw]
        for stream_entries in streams:
            for entry_id, fields in stream_entries:
                entries.append((as_str(entry_id), fields))
        return entries

    async def _autoclaim(self, count: int) -> list[tuple[str, Any]]:
        """Claim entries idle longer than BILLING_CLAIM_IDLE_MS (from dead or stuck consumers).

        An entry deleted from the stream while pending (trimmed, XDEL) must never happen: it is
        logged as an ALERT and recorded in the dead-letter stream (kind ``deleted``).
        """
        reply = await self.redis.xautoclaim(
            self.stream,
            self.settings.billing_group,
            self.name,
            min_idle_time=self.settings.billing_claim_idle_ms,
            start_id=self._claim_cursor,
            count=count,
        )
        self._claim_cursor = as_str(reply[0])
        entries = [(as_str(entry_id), fields) for entry_id, fields in reply[1] if entry_id is not None]
        unnamed = len(reply[1]) - len(entries)
        deleted_ids = [as_str(i) for i in reply[2]] if len(reply) > 2 and reply[2] else []
        if unnamed or deleted_ids:
            logger.error(
                "ALERT: XAUTOCLAIM found pending billing entries deleted from the stream before they "
                "were applied (the stream was trimmed or XDEL'd): %s",
                deleted_ids or f"{unnamed} entries",
            )
        for entry_id in deleted_ids:  # Redis >= 7 names them and drops them from the pending list
            await self._dead_letter(entry_id, "deleted", DELETED_REASON, 0, "", {})
            self.stats["deleted"] += 1
        if unnamed:
            # Redis 6.2 returns nil for them and keeps them pending, now for this consumer: re-read
            # this consumer's pending list, where they come back as ids without fields
            self._own_pending_cursor = "0-0"
        return entries

    # applying -----------------------------------------------------------------------------------

    def _apply_args(self, event: StreamEvent) -> list[str]:
        """KEYS and ARGV of APPLY_SCRIPT for one event."""
        keys = [self.keys.applied, self.keys.balances, self.keys.meta, self.keys.duplicates]
        keys += [self.keys.history(adv) for adv, _ in event.payments]
        head = [event.stream_id, event.auction_id, event.created_at_ms, event.currency, event.revenue_micro]
        packed = json.dumps(head + [x for pair in event.payments for x in pair], ensure_ascii=False)
        args = [str(len(keys)), *keys, packed, self.settings.currency, self.keys.history_prefix]
        return [*args, event.campaigns] if event.campaigns else args

    async def _evalsha_all(self, items: list[_Pending]) -> None:
        """One EVALSHA per event, the batch in one MULTI/EXEC: Redis fsyncs the batch's AOF once, not
        once per event-loop turn (the scripts run back to back, ~40 us each). On NOSCRIPT (Redis 7
        forgets scripts on restart) the script is loaded again and those events rerun (idempotent).
        Any other script error makes that event "invalid" (retried, then dead-lettered)."""
        todo = [item for item in items if item.event is not None]
        posts = group_posts(post for item in todo if item.event for post in item.event.posts())
        for attempt in range(3):
            if not todo and not posts:
                return
            sha = self._apply_sha or (await self._load_scripts())[0]
            applies = [("EVALSHA", sha, *self._apply_args(item.event)) for item in todo if item.event]
            pipe = self.redis.pipeline(transaction=not self.settings.redis_cluster)
            for command in [] if self.settings.redis_cluster else applies:
                pipe.execute_command(*command)
            if posts:
                budget_sha, now_ms = await self.budget.sha(), int(time.time() * 1000)
                for (campaign_id, step), auction_ids in posts.items():
                    args = self.budget.consumer_post_args(step, auction_ids, now_ms)
                    self.budget.queue(pipe, budget_sha, campaign_id, args)
            results = await self._execute(pipe, applies)
            posts = self.budget.count_posts(posts, results[len(todo) :], self.stats)
            retry: list[_Pending] = []
            for item, result in zip(todo, results[: len(todo)], strict=True):
                if isinstance(result, NoScriptError):
                    retry.append(item)
                elif isinstance(result, ResponseError):
                    item.outcome, item.detail = "invalid", f"ledger script error: {result}"
                elif isinstance(result, Exception):
                    raise result
                else:
                    item.outcome, item.detail = as_str(result[0]), as_str(result[1])
            if retry or posts:
                self.stats["script_reloads"] += 1
                logger.warning(
                    "ledger script missing on the server (restart?): loading it again (try %d)", attempt + 1
                )
                self._apply_sha = None
            todo = retry
        raise RuntimeError("the ledger script could not be loaded")

    async def _execute(self, pipe: Any, applies: list[tuple[Any, ...]]) -> list[Any]:
        """The applies' MULTI, then the budget posts. On a Redis Cluster the applies go raw on one
        connection to the shard's primary (app.ledger.cluster; redis-py's ClusterPipeline transaction
        is several times slower) and `pipe` holds the posts only, each routed to its campaign's slot."""
        if not self.settings.redis_cluster:
            return list(await pipe.execute(raise_on_error=False))
        results = (
            list(await write_and_wait(self.redis, self.stream, applies, transaction=True)) if applies else []
        )
        return results + list(await pipe.execute(raise_on_error=False))

    async def _dead_letter(
        self,
        stream_id: str,
        kind: str,
        reason: str,
        deliveries: int,
        auction_id: str,
        fields: Mapping[str, str],
    ) -> bool:
        keys = [self.keys.dead, self.dead_stream, self.keys.meta]
        args = [stream_id, kind, reason, str(deliveries), self.name, auction_id, _entry_json(fields)]
        for _ in range(2):
            sha = self._dead_sha or (await self._load_scripts())[1]
            try:
                written = await self.redis.evalsha(sha, len(keys), *keys, *args)
            except NoScriptError:
                self._dead_sha = None
                continue
            if written:
                logger.error(
                    "billing event dead-lettered",
                    extra={"stream_id": stream_id, "kind": kind, "reason": reason, "auction_id": auction_id},
                )
            return bool(written)
        raise RuntimeError("the dead-letter script could not be loaded")

    async def _deliveries(self, stream_ids: Sequence[str]) -> dict[str, int]:
        pipe = self.redis.pipeline(transaction=False)
        for stream_id in stream_ids:
            pipe.xpending_range(self.stream, self.settings.billing_group, stream_id, stream_id, 1)
        counts: dict[str, int] = {}
        for stream_id, rows in zip(stream_ids, await pipe.execute(), strict=True):
            counts[stream_id] = int(rows[0]["times_delivered"]) if rows else 0
        return counts

    async def process_batch(self) -> int:
        """Claim stuck entries, read a batch, apply each exactly once, XACK. Returns entries handled.

        "Handled" counts every entry taken from the stream in this call, including a malformed one that
        is left pending for another delivery. Blocks up to BILLING_BLOCK_MS when there is nothing.
        The steps: take entries (own pending, claimed, new) → parse → apply (`_evalsha_all`, the
        script decides each outcome) → settle each outcome → XACK; an entry is acknowledged only after
        its outcome is written, so a crash between any two steps redelivers it.
        """
        if self._apply_sha is None:
            await self.ensure_group()
        if time.monotonic() >= self._next_expiry_at:  # BILLING_MODE=render: unrendered charges expire
            self._next_expiry_at = time.monotonic() + RENDER_EXPIRY_SWEEP_S
            self.stats["render_expired"] += await self.render.expire_due()
        raw = await self._take_entries(self.settings.billing_batch_size)
        if not raw:
            return 0
        if self.linger_s > 0:
            # Inside the gateway: the read wakes up the moment an auction's XADD lands, while that
            # auction is still answering; apply after it (~0.5 ms less gateway overhead). The entries
            # stay pending meanwhile: a crash here redelivers them, as at any other point.
            await asyncio.sleep(self.linger_s)
        items = [_parsed(entry_id, fields) for entry_id, fields in raw]
        await self._evalsha_all(items)
        await self.render.frequency.post_events([i.event for i in items if i.event], self.stats)
        done = await self._settle(items)
        pause = self.settings.billing_fault_pause_before_ack_s
        if pause > 0:
            logger.warning(
                "fault injection: pausing %.3fs between apply and XACK of %d entries", pause, len(done)
            )
            await asyncio.sleep(pause)
        if done:
            await self.redis.xack(self.stream, self.settings.billing_group, *done)
        return len(items)

    async def _take_entries(self, size: int) -> list[tuple[str, Any]]:
        """Up to `size` entries: this consumer's own pending ones first (after a start or a Redis
        error), then entries idle too long in another's pending list, then new ones."""
        raw: list[tuple[str, Any]] = []
        if self._own_pending_cursor is not None:
            raw = await self._read(self._own_pending_cursor, size, None)
            if raw:
                self._own_pending_cursor = raw[-1][0]
                self.stats["recovered"] += len(raw)
            else:
                self._own_pending_cursor = None
        # XAUTOCLAIM every claim_idle/2 (an entry cannot become claimable faster than that), or at
        # once while a scan of the pending list is under way: one round trip less per batch
        if len(raw) < size and (time.monotonic() >= self._next_claim_at or self._claim_cursor != "0-0"):
            self._next_claim_at = time.monotonic() + self.settings.billing_claim_idle_ms / 2000
            claimed = await self._autoclaim(size - len(raw))
            if claimed:
                logger.warning(
                    "claimed %d entries idle > %d ms", len(claimed), self.settings.billing_claim_idle_ms
                )
                self.stats["claimed"] += len(claimed)
            seen = {entry_id for entry_id, _ in raw}
            raw += [entry for entry in claimed if entry[0] not in seen]
        if len(raw) < size:
            block = None if raw else self.settings.billing_block_ms
            raw += await self._read(">", size - len(raw), block)
        return raw

    async def _settle(self, items: list[_Pending]) -> list[str]:
        """Count each outcome and dead-letter what must be; returns the stream ids to acknowledge
        (every entry but a malformed one below BILLING_MAX_DELIVERIES, left pending for another try)."""
        done: list[str] = []
        invalid = [item for item in items if item.outcome == "invalid"]
        deliveries = await self._deliveries([item.stream_id for item in invalid]) if invalid else {}
        for item in items:
            self.stats[item.outcome] += 1
            auction_id = item.fields.get("auction_id", "")
            if item.outcome in ("applied", "redelivered", "duplicate"):
                done.append(item.stream_id)
            elif item.outcome == "deleted":
                logger.error("ALERT: pending billing entry %s was deleted from the stream", item.stream_id)
                await self._dead_letter(item.stream_id, "deleted", item.detail, 0, "", {})
                done.append(item.stream_id)
            elif item.outcome == "conflict":
                logger.error("billing conflict: %s", item.detail, extra={"stream_id": item.stream_id})
                await self._dead_letter(item.stream_id, "conflict", item.detail, 0, auction_id, item.fields)
                done.append(item.stream_id)
            elif item.outcome == "invalid":
                count = deliveries.get(item.stream_id, 0)
                if count >= self.settings.billing_max_deliveries:
                    await self._dead_letter(
                        item.stream_id, "malformed", item.detail, count, auction_id, item.fields
                    )
                    done.append(item.stream_id)
                else:
                    logger.warning(
                        "malformed billing event left pending (delivery %d of %d): %s",
                        count,
                        self.settings.billing_max_deliveries,
                        item.detail,
                        extra={"stream_id": item.stream_id},
                    )
            else:  # pragma: no cover - the script only returns the outcomes above
                raise RuntimeError(f"unexpected ledger script outcome {item.outcome!r}")
        return done

    async def run(self, stop: asyncio.Event) -> None:
        """Process batches until `stop` is set (the current batch is finished first).

        Redis errors (a restart, a network cut) are logged and retried with back-off up to 5 s.
        """
        backoff = 0.1
        while not stop.is_set():
            try:
                await self.process_batch()
                backoff = 0.1
            except (RedisError, OSError) as error:
                self._apply_sha = None  # next batch: ensure_group again (NOGROUP after a data loss)
                # The batch it was applying may be read but not acknowledged: re-read this consumer's
                # own pending entries first (the apply is idempotent), not after BILLING_CLAIM_IDLE_MS.
                self._own_pending_cursor = "0-0"
                logger.warning(
                    "ledger consumer: Redis error, retrying in %.1fs: %s: %s",
                    backoff,
                    type(error).__name__,
                    error,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=backoff)
                backoff = min(backoff * 2, 5.0)
        logger.info("ledger consumer %s stopped", self.name, extra=dict(self.stats))
