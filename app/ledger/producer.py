"""The gateway's side of billing: one durable XADD per auction, or a clear failure.

Job: `BillingProducer.append` writes a `BillingEvent` to the stream BILLING_STREAM (with the
auction's audit record in the same MULTI/EXEC when given) and turns any Redis error or a wait past
BILLING_APPEND_TIMEOUT_S into `BillingUnavailableError` (the gateway answers 503, nothing billed).
`record` is the auction's final write: the audit record, then the billing event (mode `bill`), a
pending charge (`pending`, BILLING_MODE=render) or nothing (`none`, a test auction), and the
idempotency key's outcome, all in one atomic write: after any crash all of them exist or none, and a
key taken over by another gateway writes nothing. A keyed `bill` (the common keyed case) is one
script, `idempotency_bill.lua` (check the key, SET, XADD, SET: one round trip, one fsync, as the
unkeyed MULTI); `pending` / `none` with a key are a MULTI/EXEC under a WATCH of the key (EXEC fails if
anyone touched it). Every write takes an optional `log_entry` (issue 35: the auction's signed
statement, canonical bytes): its leaf is appended to the transparency log (app.ledger.tlog) in the
same script or MULTI, so a stored record always has its leaf and a leaf always its record. With
ARCHIVE_DSN (issue 36) the record's key also enters the archive queue (`ARCHIVE_QUEUE_KEY`, app.archive)
in that same write, so every stored record is archived and dropped from Redis. Imports
app.settings and app.ledger (events, keys, idempotency, render, scripts, tlog) only.
See docs/DESIGN.md § Billing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.exceptions import RedisError, WatchError

from app.ledger.cluster import WaitShortError, write_and_wait
from app.ledger.events import BillingEvent
from app.ledger.idempotency import IdempotencyLostError, IdempotencyWrite, owned
from app.ledger.keys import archive_queue_key, as_str, hot_tag, stream_key
from app.ledger.render import pending_commands
from app.ledger.scripts import IDEMPOTENCY_BILL_SCRIPT
from app.ledger.tlog import log_args, log_keys, log_keys_for, queue_log_append
from app.settings import Settings

BillMode = Literal["bill", "pending", "none"]


class BillingUnavailableError(RuntimeError):
    """The billing event could not be durably appended; the auction must fail (503)."""


class BillingProducer:
    """Appends billing events: one XADD per auction, acknowledged only once Redis has written it."""

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self._bill_keyed = redis.register_script(IDEMPOTENCY_BILL_SCRIPT)  # EVALSHA, EVAL if unknown
        self._stream = stream_key(settings)  # the keys carry the ledger shard's tag on a cluster
        self._log_keys = log_keys_for(hot_tag(settings))
        # REDIS_CLUSTER: a bill is answered only once REDIS_WAIT_REPLICAS replicas have it (WAIT)
        self._wait = settings.redis_wait_replicas if settings.redis_cluster else 0
        # a cluster's bill goes on one raw connection (write_and_wait), WAIT or not: redis-py's
        # ClusterPipeline transaction costs ~2 ms more per write (bench/ledger.py --cluster)
        self._raw = settings.redis_cluster

    def _archive_keys(self) -> list[str]:
        """The bill script's optional KEYS[6] and [7]: the archive queue and the count of log leaves
        archived (their index counts them), with ARCHIVE_DSN only."""
        if not self.settings.archive_dsn:
            return []
        return [archive_queue_key(self.settings), self._log_keys.base]

    def _queue_archive(self, pipe: Any, record_key: str) -> None:
        """With ARCHIVE_DSN: the record's key enters the archive queue in the record's own MULTI."""
        if self.settings.archive_dsn:
            pipe.zadd(archive_queue_key(self.settings), {record_key: int(time.time() * 1000)})

    async def _waited(self, commands: list[tuple[Any, ...]], transaction: bool) -> Any:
        """REDIS_CLUSTER: the write on its slot's primary, then WAIT on the same connection
        (app.ledger.cluster.write_and_wait). Invariant: the client is told "billed" (200) only when
        REDIS_WAIT_REPLICAS replicas have the write; else 503 and a keyed retry replays it."""
        return await write_and_wait(
            self.redis,
            self._stream,
            commands,
            transaction=transaction,
            replicas=self._wait,
            timeout_ms=self.settings.redis_wait_timeout_ms,
        )

    @contextlib.asynccontextmanager
    async def _write(self, event: BillingEvent) -> AsyncIterator[None]:
        """BILLING_APPEND_TIMEOUT_S around one write; Redis errors and the timeout become
        BillingUnavailableError naming the cause, a WATCH that fired IdempotencyLostError."""
        if event.revenue_micro != sum(event.payments_micro.values()):
            raise ValueError("revenue_micro must equal the sum of payments_micro")
        try:
            async with asyncio.timeout(self.settings.billing_append_timeout_s):
                yield
        except WaitShortError as error:
            raise BillingUnavailableError(f"billing write of auction {event.auction_id}: {error}") from error
        except WatchError as error:
            raise IdempotencyLostError(
                f"the Idempotency-Key changed during the write of auction {event.auction_id}: not written"
            ) from error
        except TimeoutError as error:
            raise BillingUnavailableError(
                f"billing XADD took longer than {self.settings.billing_append_timeout_s}s "
                f"(auction {event.auction_id})"
            ) from error
        except (RedisError, OSError) as error:
            raise BillingUnavailableError(
                f"billing XADD failed for auction {event.auction_id}: {type(error).__name__}: {error}"
            ) from error

    async def append(
        self, event: BillingEvent, audit: tuple[str, str, int] | None = None, log_entry: bytes | None = None
    ) -> str:
        """XADD the event (trimmed only once applied everywhere: trim.py); returns its stream id.

        `audit` = (key, JSON record, ttl seconds): the auction's audit record is SET in the same
        MULTI/EXEC as the XADD, so both or neither are written; so is `log_entry`'s leaf (app.ledger.tlog).
        Any Redis error or a wait longer than BILLING_APPEND_TIMEOUT_S raises BillingUnavailableError
        naming the cause.
        """
        fields: dict[Any, Any] = dict(event.stream_fields())
        async with self._write(event):
            if audit is None and log_entry is None and not self._raw:
                return as_str(await self.redis.xadd(self._stream, fields))
            pipe: Any = _Recorder() if self._raw else self.redis.pipeline(transaction=True)
            if audit is not None:
                key, record, ttl_s = audit
                pipe.set(key, record, ex=ttl_s)
                self._queue_archive(pipe, key)
            pipe.xadd(self._stream, fields)
            if log_entry is not None:
                archived = bool(self.settings.archive_dsn)
                queue_log_append(pipe, event.auction_id, log_entry, self._log_keys, archived=archived)
            if self._raw:  # REDIS_CLUSTER: the same MULTI on one connection, then WAIT
                replies = await self._waited(pipe.commands(), transaction=True)
            else:
                replies = await pipe.execute()
        # the XADD's reply: after the record's SET and (ARCHIVE_DSN) the archive queue's ZADD
        return as_str(replies[0 if audit is None else (2 if self.settings.archive_dsn else 1)])

    async def record(
        self,
        event: BillingEvent,
        audit: tuple[str, str, int],
        mode: BillMode = "bill",
        idempotency: IdempotencyWrite | None = None,
        log_entry: bytes | None = None,
    ) -> str:
        """The auction's final write (see the module docstring); returns the stream id ('' unless billed).
        `log_entry`: the bytes appended to the transparency log as this auction's leaf, in the same write.

        Raises BillingUnavailableError (Redis down or slow) or IdempotencyLostError (the key is no
        longer this request's: nothing was written).
        """
        if mode == "bill" and idempotency is None:
            return await self.append(event, audit, log_entry)
        key, record, ttl_s = audit
        if mode == "bill":  # keyed (the unkeyed bill returned above)
            assert idempotency is not None
            fields = [part for pair in event.stream_fields().items() for part in pair]
            claim = idempotency.claim
            keys = [claim.key, key, self._stream, *log_keys(self._log_keys), *self._archive_keys()]
            args: list[Any] = [
                claim.running_value,
                idempotency.value,
                idempotency.ttl_s,
                record,
                ttl_s,
                *log_args(event.auction_id, log_entry),
                *fields,
            ]
            async with self._write(event):
                if self._raw:
                    script = ("EVAL", IDEMPOTENCY_BILL_SCRIPT, len(keys), *keys, *args)
                    stream_id = await self._waited([script], transaction=False)
                else:
                    stream_id = await self._bill_keyed(keys=keys, args=args)
            if stream_id == 0:
                raise IdempotencyLostError("the Idempotency-Key was taken by another request")
            return as_str(stream_id)
        archiving = bool(self.settings.archive_dsn)
        async with self._write(event), self.redis.pipeline(transaction=True) as pipe:
            if idempotency is not None:
                await pipe.watch(idempotency.claim.key)
                if not owned(await pipe.get(idempotency.claim.key), idempotency.claim):
                    raise IdempotencyLostError("the Idempotency-Key was taken by another request")
                pipe.multi()
            pipe.set(key, record, ex=ttl_s)
            self._queue_archive(pipe, key)
            if mode == "pending":
                pending_commands(pipe, event, self.settings)
            if log_entry is not None:
                queue_log_append(pipe, event.auction_id, log_entry, self._log_keys, archived=archiving)
            if idempotency is not None:
                pipe.set(idempotency.claim.key, idempotency.value, ex=idempotency.ttl_s)
            await pipe.execute()
        return ""


class _Recorder:
    """Collects the commands a MULTI would queue (the same redis-py methods: set, zadd, xadd, eval), as
    argument tuples for `write_and_wait`."""

    def __init__(self) -> None:
        self._commands: list[tuple[Any, ...]] = []

    def set(self, key: str, value: str, ex: int) -> None:
        self._commands.append(("SET", key, value, "EX", ex))

    def zadd(self, key: str, mapping: dict[str, int]) -> None:
        pairs = (x for member, score in mapping.items() for x in (score, member))
        self._commands.append(("ZADD", key, *pairs))

    def xadd(self, key: str, fields: dict[Any, Any]) -> None:
        self._commands.append(("XADD", key, "*", *(x for pair in fields.items() for x in pair)))

    def eval(self, script: str, numkeys: int, *args: Any) -> None:
        self._commands.append(("EVAL", script, numkeys, *args))

    def commands(self) -> list[tuple[Any, ...]]:
        return list(self._commands)
