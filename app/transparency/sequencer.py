"""The transparency log's sequencer: extends the in-memory tree from Redis, checks, signs tree heads.

Job: `TransparencyLog` holds this process's `LogTree` (extended from Redis from its own size, never
rebuilt) and `tick` issues a signed tree head when the log grew: it reads the new leaves, checks
that the stored leaves still give every signed head's history, and signs (`HeadSigner`) and stores
the new head (`LogStore.put_head`). `run` ticks every TRANSPARENCY_HEAD_INTERVAL_S (one task per
gateway: `mosaic serve` runs it next to the embedded ledger; several gateways at once are safe).
The routes get proofs from it (`covering_head`, `inclusion_path`, `consistency_path`). Imports redis,
app.settings and app.transparency only. See docs/DESIGN.md § Verifiable auctions.

Checks before each head (any failure: logged, `log_tampered` counted, no head signed, and the log
stays halted until the stored leaves agree again):
* `deleted`: Redis holds fewer leaves than the latest signed head, or than this process read, or a
  leaf archived and trimmed from Redis (issue 36) is missing from the PostgreSQL archive;
* `rewritten`: the leaves give another root at the latest head's size than the head (a rewrite
  before this process read them: after a restart, or on another gateway), or a leaf read earlier
  differs from Redis now (TRANSPARENCY_AUDIT_LEAVES re-read per tick, in rotation: every leaf is
  re-read within size / that many ticks);
* `fork`: another gateway stored a head of the same size with another root;
* `malformed`: a stored leaf is not a hash.
A head is always computed from the leaves this process read first, so it never covers a rewritten
leaf; a restarted process re-reads them all and stops at the mismatch.

Several gateways: each signs the size it sees; one head per size is stored (the first), the others
read it back and compare roots (a deterministic tree: the same leaves give the same root), and a
head smaller than the latest is never stored, so sizes and timestamps only grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from app.ledger.cluster import WaitShortError, wait_replicated
from app.ledger.keys import hot_tag
from app.ledger.tlog import log_keys_for
from app.settings import Settings
from app.transparency.heads import HeadSigner, SignedTreeHead, sign_head
from app.transparency.observers import NoopTransparencyObserver, TransparencyObserver
from app.transparency.store import ArchivedLeaves, LogStore, MalformedLeafError, MissingLeafError
from app.transparency.tree import LogTree

logger = logging.getLogger(__name__)


class LogTamperedError(RuntimeError):
    """The stored log no longer gives its signed history (see the module docstring)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class TransparencyLog:
    def __init__(
        self,
        redis: aioredis.Redis,
        settings: Settings,
        signer: HeadSigner | None = None,
        observer: TransparencyObserver | None = None,
        archived: ArchivedLeaves | None = None,
    ) -> None:
        keys = log_keys_for(hot_tag(settings))  # the ledger shard's tag on a Redis Cluster (issue 36)
        # `archived`: the leaves archived to PostgreSQL (ARCHIVE_DSN, issue 36; the gateway sets it)
        self.store = LogStore(redis, keys, heads_kept=settings.transparency_heads_kept, archived=archived)
        self.settings = settings
        self.signer = signer
        self.observer = observer or NoopTransparencyObserver()
        self.tree = LogTree()
        self.halted: LogTamperedError | None = None
        self._lock = asyncio.Lock()
        self._audit_cursor = 0

    async def _extend(self, size: int) -> None:
        """Read leaves tree.size..size-1 from Redis into the tree."""
        if size > self.tree.size:
            try:
                hashes = await self.store.leaf_hashes(self.tree.size, size)
            except MalformedLeafError as error:
                raise LogTamperedError("malformed", str(error)) from error
            except MissingLeafError as error:
                raise LogTamperedError("deleted", str(error)) from error
            self.tree.append_leaf_hashes(hashes)

    def _check_head(self, head: SignedTreeHead | None) -> None:
        """The tree (at least head.tree_size leaves) gives the head's root."""
        if head is None or head.tree_size > self.tree.size:
            return
        root = self.tree.root(head.tree_size)
        if root != head.root_hash:
            raise LogTamperedError(
                "rewritten",
                f"the stored leaves give the root {root.hex()} at size {head.tree_size}, the signed head "
                f"says {head.root_hash.hex()}: the log was rewritten",
            )

    async def _audit(self) -> None:
        """Re-read TRANSPARENCY_AUDIT_LEAVES leaves read earlier, in rotation (wrapping around: a log
        no larger than that is re-read whole every tick), and compare."""
        size = self.tree.size
        width = min(self.settings.transparency_audit_leaves, size)
        if width == 0:
            return
        start = self._audit_cursor % size
        segments = [(start, min(start + width, size))]
        if start + width > size:
            segments.append((0, start + width - size))
        for first, stop in segments:
            await self._compare(first, stop)
        self._audit_cursor = (start + width) % size

    async def _compare(self, start: int, stop: int) -> None:
        try:
            stored = await self.store.leaf_hashes(start, stop)
        except MalformedLeafError as error:
            raise LogTamperedError("malformed", str(error)) from error
        except MissingLeafError as error:
            raise LogTamperedError("deleted", str(error)) from error
        for offset, digest in enumerate(stored):
            if digest != self.tree.leaf(start + offset):
                raise LogTamperedError(
                    "rewritten",
                    f"leaf {start + offset} is {digest.hex()} in Redis, it was "
                    f"{self.tree.leaf(start + offset).hex()} when read: the log was rewritten",
                )
        if len(stored) < stop - start:
            raise LogTamperedError("deleted", f"leaves from {start + len(stored)} on are gone from Redis")

    async def _sync(self) -> tuple[int, SignedTreeHead | None]:
        """Read the new leaves and run the checks; (Redis' size, the latest head) or LogTamperedError."""
        latest = await self.store.latest_head()
        size = await self.store.size()
        signed = latest.tree_size if latest else 0
        if size < max(signed, self.tree.size):
            raise LogTamperedError(
                "deleted",
                f"the log holds {size} leaves, fewer than the signed head ({signed}) or than were read "
                f"({self.tree.size}): leaves were deleted",
            )
        if not await self._replicated():
            size = self.tree.size  # not this tick: only leaves a replica has are read (next tick)
        await self._extend(size)
        self._check_head(latest)
        await self._audit()
        return size, latest

    async def _replicated(self) -> bool:
        """REDIS_CLUSTER: a barrier (app.ledger.cluster.wait_replicated) after reading the log's size, so
        every leaf counted has reached a replica. Invariant: no head covers a leaf that a failover may
        lose (a bill answered 503 may still have appended one on the primary): no fork."""
        try:
            await wait_replicated(self.store.redis, self.settings)
        except WaitShortError:
            return False
        return True

    def _halt(self, error: LogTamperedError) -> None:
        if self.halted is None or self.halted.kind != error.kind:  # once per incident
            logger.error("transparency log: no head signed: %s", error, extra={"kind": error.kind})
            self.observer.log_tampered(error.kind)
        self.halted = error

    async def tick(self, now_ms: int | None = None) -> SignedTreeHead | None:
        """One sequencer step: the latest head after it (signed now if the log grew), None before any.
        Raises LogTamperedError (after counting it) when a check fails: nothing signed."""
        async with self._lock:
            try:
                size, latest = await self._sync()
            except LogTamperedError as error:
                self._halt(error)
                raise
            self.halted = None
            if self.signer is None or (latest is not None and size <= latest.tree_size):
                return latest
            begin = time.perf_counter()
            now = int(time.time() * 1000) if now_ms is None else now_ms
            head = sign_head(
                size, self.tree.root(size), max(now, latest.timestamp_ms if latest else 0), self.signer
            )
            stored = await self.store.put_head(head)
            if stored is not None and stored.root_hash != head.root_hash:
                fork = LogTamperedError(
                    "fork",
                    f"a head of size {size} with root {stored.root_hash.hex()} is stored, these leaves give "
                    f"{head.root_hash.hex()}",
                )
                self._halt(fork)
                raise fork
            self.observer.log_head(size, time.perf_counter() - begin)
            return stored or await self.store.latest_head()

    async def run(self, stop: asyncio.Event) -> None:
        """Tick every TRANSPARENCY_HEAD_INTERVAL_S until `stop`; Redis errors are retried next tick."""
        while not stop.is_set():
            with contextlib.suppress(LogTamperedError):
                try:
                    await self.tick()
                except (RedisError, OSError, RuntimeError) as error:
                    logger.warning("transparency tick failed (retried): %s: %s", type(error).__name__, error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.settings.transparency_head_interval_s)

    async def covering_head(self, leaf_index: int) -> SignedTreeHead | None:
        """The latest head if it covers `leaf_index` (its leaves read and checked), else None."""
        head = await self.store.latest_head()
        if head is None or head.tree_size <= leaf_index:
            return None
        await self.at_least(head)
        return head

    async def at_least(self, head: SignedTreeHead) -> None:
        """Make the tree hold `head`'s leaves (read from Redis if another gateway signed it) and check
        they give its root; LogTamperedError if not."""
        async with self._lock:
            if self.halted is not None:
                raise self.halted
            try:
                await self._extend(head.tree_size)
                if self.tree.size < head.tree_size:
                    raise LogTamperedError("deleted", f"fewer leaves than the head's {head.tree_size}")
                self._check_head(head)
            except LogTamperedError as error:
                self._halt(error)
                raise

    def inclusion_path(self, leaf_index: int, tree_size: int) -> list[bytes]:
        return self.tree.inclusion_path(leaf_index, tree_size)

    def consistency_path(self, first: int, second: int) -> list[bytes]:
        return self.tree.consistency_path(first, second)
