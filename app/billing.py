"""Billing: the durable event producer, the exactly-once ledger consumer, the read side, reconcile.

The path of one payment (DESIGN.md § Billing)::

    gateway ── BillingProducer.append: ONE XADD (fsynced: appendfsync always) ──► stream BILLING_STREAM
    LedgerConsumer (group BILLING_GROUP): XAUTOCLAIM stuck entries + XREADGROUP a batch
        ─► one EVALSHA per event (the batch pipelined in one MULTI/EXEC): validate everything, then
           mark the auction applied and post both ledger legs in the same script
        ─► [fault-injection pause: BILLING_FAULT_PAUSE_BEFORE_ACK_S] ─► XACK

A crash anywhere is safe: an entry applied but not acknowledged is delivered again (to the same
consumer name from its pending list at start, to any consumer through XAUTOCLAIM after
BILLING_CLAIM_IDLE_MS) and the script answers ``redelivered`` without writing. The stream is never
trimmed. Run it: ``mosaic ledger consume`` or ``python -m app.billing`` (settings from the
environment), or embedded in ``mosaic serve``.

Money is integer micro-units (1 unit = 1_000_000 micro) everywhere after `to_micro_units`.

Redis keys of the ledger (prefix ``mosaic:ledger:``):

``applied``  hash auction id -> ``{"s": stream id, "f": canonical payload}``: the idempotency marker
             and the record every balance is recomputed from by `reconcile`.
``balances`` hash account -> micro-units. Double entry: an advertiser's payment ``p`` debits
             ``advertiser:<id>`` by ``p`` and credits ``platform:revenue`` by ``p``; the sum over all
             accounts is always 0. An advertiser's balance is therefore minus what it has paid
             (a credit, ``p < 0``, raises it).
``history:<advertiser id>``  list of JSON entries (auction id, stream id, created_at_ms,
             payment_micro), oldest first; never trimmed (it is the advertiser's statement); its
             length is the number of auctions billed to the advertiser.
``meta``     hash of counters: duplicates, conflicts, dead_letters (events applied = HLEN applied).
             The script does as few Redis calls as it can (4 + 2 per advertiser): throughput.
``dead``     hash stream id -> kind: makes dead-lettering idempotent (each stream entry is written to
             the dead-letter stream at most once, however often it is redelivered).
``duplicates`` hash stream id -> auction id: a second stream entry with the same auction id and the
             same payload (a producer retry): acknowledged, counted once, not applied again.

Outcomes of an event: ``applied``; ``redelivered`` (this same stream entry was applied before, e.g.
the consumer died between the apply and XACK); ``duplicate`` (see above); ``conflict`` (same auction
id, different payload: recorded and dead-lettered at once, never applied, nothing overwritten);
``invalid`` (malformed: left pending, retried through XAUTOCLAIM, dead-lettered with the reason when
its delivery count reaches BILLING_MAX_DELIVERIES). Nothing is dropped silently.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import re
import signal
import socket
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from app.settings import Settings

logger = logging.getLogger(__name__)

MICRO_UNITS_PER_UNIT = 1_000_000
# Largest |payment| of one advertiser in one auction (10 million units). It keeps every sum inside a
# Lua script exact (Lua numbers are doubles: exact below 2**53) with up to MAX_ADVERTISERS_PER_EVENT.
MAX_ABS_PAYMENT_MICRO = 10_000_000 * MICRO_UNITS_PER_UNIT
MAX_ADVERTISERS_PER_EVENT = 256
MAX_ID_LENGTH = 256
EVENT_VERSION = "1"

LEDGER_PREFIX = "mosaic:ledger:"
PLATFORM_ACCOUNT = "platform:revenue"
ADVERTISER_ACCOUNT_PREFIX = "advertiser:"
AUDIT_KEY_PATTERN = "mosaic:auction:*"
LAG_COUNT_CAP = 1000
DELETED_REASON = "deleted from the stream (trimmed or XDEL) before it was applied"


# --- money ---------------------------------------------------------------------------------------


def to_micro_units(amount: float) -> int:
    """Units -> integer micro-units, rounding half to even.

    The float is read as the shortest decimal that round-trips it (``repr``), so ``0.1`` is exactly
    100_000 micro and ``2.5e-06`` (exactly half a micro-unit as written) rounds to 2, whereas
    ``amount * 1e6`` would carry binary noise into the rounding. NaN and infinities raise ValueError.
    """
    if isinstance(amount, bool):
        raise ValueError("a payment must be a number, not a bool")
    if isinstance(amount, int):
        return amount * MICRO_UNITS_PER_UNIT
    if not math.isfinite(amount):
        raise ValueError(f"a payment must be finite, got {amount!r}")
    try:
        exact = Decimal(repr(float(amount))).scaleb(6)
    except InvalidOperation as error:  # pragma: no cover - repr of a finite float always parses
        raise ValueError(f"not a number: {amount!r}") from error
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def format_micro(micro: int) -> str:
    """Integer micro-units -> an exact decimal string with 6 places (``-1.250000``)."""
    return f"{Decimal(micro).scaleb(-6):.6f}"


# --- the event -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BillingEvent:
    """One auction's payments; `revenue_micro` is the sum of the rounded payments, so it balances."""

    auction_id: str
    created_at_ms: int
    currency: str
    payments_micro: dict[str, int]
    revenue_micro: int

    def stream_fields(self) -> dict[str, str]:
        """The fields of the stream entry (payments as canonical JSON: sorted keys, integers)."""
        return {
            "v": EVENT_VERSION,
            "auction_id": self.auction_id,
            "created_at_ms": str(self.created_at_ms),
            "currency": self.currency,
            "revenue_micro": str(self.revenue_micro),
            "payments": json.dumps(self.payments_micro, sort_keys=True, separators=(",", ":")),
        }


def _check_id(kind: str, value: str) -> None:
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        raise ValueError(f"{kind} must be a non-empty string of at most {MAX_ID_LENGTH} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"{kind} is not valid Unicode text: {value!r}") from error


def make_billing_event(
    auction_id: str, payments: Mapping[str, float], currency: str, now_ms: int | None = None
) -> BillingEvent:
    """Round each payment to micro-units (`to_micro_units`); revenue = sum of the rounded payments.

    Payments may be negative (a credit). Raises ValueError on an empty id, a non-finite or too large
    payment, too many advertisers or a currency that is not three upper-case letters.
    """
    _check_id("auction_id", auction_id)
    if not (isinstance(currency, str) and len(currency) == 3 and currency.isascii() and currency.isupper()):
        raise ValueError(f"currency must be three upper-case letters, got {currency!r}")
    if len(payments) > MAX_ADVERTISERS_PER_EVENT:
        raise ValueError(f"at most {MAX_ADVERTISERS_PER_EVENT} advertisers per billing event")
    micro: dict[str, int] = {}
    for advertiser_id in sorted(payments):
        _check_id("advertiser id", advertiser_id)
        value = to_micro_units(payments[advertiser_id])
        if abs(value) > MAX_ABS_PAYMENT_MICRO:
            raise ValueError(f"payment of {advertiser_id!r} exceeds {format_micro(MAX_ABS_PAYMENT_MICRO)}")
        micro[advertiser_id] = value
    created = int(time.time() * 1000) if now_ms is None else int(now_ms)
    if created < 0:
        raise ValueError("created_at_ms must not be negative")
    return BillingEvent(
        auction_id=auction_id,
        created_at_ms=created,
        currency=currency,
        payments_micro=micro,
        revenue_micro=sum(micro.values()),
    )


# --- producer ------------------------------------------------------------------------------------


class BillingUnavailableError(RuntimeError):
    """The billing event could not be durably appended; the auction must fail (503)."""


class BillingProducer:
    """Appends billing events: one XADD per auction, acknowledged only once Redis has written it."""

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings

    async def append(self, event: BillingEvent, audit: tuple[str, str, int] | None = None) -> str:
        """XADD the event (never trimmed); returns its stream id.

        `audit` = (key, JSON record, ttl seconds): the auction's audit record is SET in the same
        MULTI/EXEC as the XADD, so both or neither are written. Any Redis error or a wait longer than
        BILLING_APPEND_TIMEOUT_S raises BillingUnavailableError naming the cause.
        """
        if event.revenue_micro != sum(event.payments_micro.values()):
            raise ValueError("revenue_micro must equal the sum of payments_micro")
        fields: dict[Any, Any] = dict(event.stream_fields())
        try:
            async with asyncio.timeout(self.settings.billing_append_timeout_s):
                if audit is None:
                    stream_id = await self.redis.xadd(self.settings.billing_stream, fields)
                else:
                    key, record, ttl_s = audit
                    pipe = self.redis.pipeline(transaction=True)
                    pipe.set(key, record, ex=ttl_s)
                    pipe.xadd(self.settings.billing_stream, fields)
                    stream_id = (await pipe.execute())[1]
        except TimeoutError as error:
            raise BillingUnavailableError(
                f"billing XADD took longer than {self.settings.billing_append_timeout_s}s "
                f"(auction {event.auction_id})"
            ) from error
        except (RedisError, OSError) as error:
            raise BillingUnavailableError(
                f"billing XADD failed for auction {event.auction_id}: {type(error).__name__}: {error}"
            ) from error
        return _s(stream_id)


# --- the Lua scripts -----------------------------------------------------------------------------

# KEYS: 1 applied, 2 balances, 3 meta, 4 duplicates, 5.. the history list of each advertiser
# ARGV: 1 the event as a JSON array of strings [stream id, auction id, created_at_ms, currency,
#       revenue, adv1, p1, adv2, p2, ...] (advertisers sorted; strings because cjson would turn numbers
#       into doubles; one argument because packing arguments is the consumer's main CPU cost),
#       2 the ledger's currency, 3 the history key prefix
# Returns {outcome, detail}. Everything is validated before the first write: a Lua error after a
# write would not roll the earlier writes back.
APPLY_SCRIPT = r"""
local function invalid(reason) return {'invalid', reason} end
local function is_int(s)
  if type(s) ~= 'string' or #s == 0 or #s > 16 then return false end
  return s == '0' or string.match(s, '^%-?[1-9]%d*$') ~= nil
end
local MAX_ABS = 10000000000000
local MAX_N = 256
local MAX_ID = 256
if #ARGV ~= 3 then return invalid('argument count does not match') end
local ok, e = pcall(cjson.decode, ARGV[1])
if not ok or type(e) ~= 'table' or #e < 5 or (#e - 5) % 2 ~= 0 then
  return invalid('event is not an array of pairs')
end
for i = 1, #e do
  if type(e[i]) ~= 'string' then return invalid('event element ' .. i .. ' is not a string') end
end
local sid, aid, created, cur, rev = e[1], e[2], e[3], e[4], e[5]
local ledger_cur, hprefix = ARGV[2], ARGV[3]
local n = (#e - 5) / 2
if n > MAX_N then return invalid('too many advertisers') end
if #KEYS ~= 4 + n then return invalid('key count does not match') end
if #aid == 0 or #aid > MAX_ID then return invalid('bad auction id') end
if not is_int(created) or string.sub(created, 1, 1) == '-' then return invalid('bad created_at_ms') end
if cur ~= ledger_cur then return invalid('currency ' .. cur .. ' but the ledger is in ' .. ledger_cur) end
if not is_int(rev) then return invalid('revenue_micro is not an integer') end
local seen = {}
local sum = 0
local parts = {created, cur, rev}
local accounts = {}
for i = 1, n do
  local adv, p = e[4 + 2 * i], e[5 + 2 * i]
  if #adv == 0 or #adv > MAX_ID then return invalid('bad advertiser id') end
  if seen[adv] then return invalid('advertiser ' .. adv .. ' appears twice') end
  seen[adv] = true
  if not is_int(p) then return invalid('payment of ' .. adv .. ' is not an integer') end
  local v = tonumber(p)
  if math.abs(v) > MAX_ABS then return invalid('payment of ' .. adv .. ' is too large') end
  if KEYS[4 + i] ~= hprefix .. adv then return invalid('history key of ' .. adv .. ' does not match') end
  sum = sum + v
  parts[#parts + 1] = adv
  parts[#parts + 1] = p
  accounts[i] = 'advertiser:' .. adv
end
if sum ~= tonumber(rev) then return invalid('revenue_micro ' .. rev .. ' is not the sum of the payments') end
local canon = cjson.encode(parts)
local existing = redis.call('HGET', KEYS[1], aid)
if existing then
  local rec = cjson.decode(existing)
  if rec['f'] == canon then
    if rec['s'] == sid then return {'redelivered', sid} end
    if redis.call('HSETNX', KEYS[4], sid, aid) == 1 then redis.call('HINCRBY', KEYS[3], 'duplicates', 1) end
    return {'duplicate', rec['s']}
  end
  return {'conflict', 'auction ' .. aid .. ' was applied from ' .. rec['s'] .. ' with a different payload: '
    .. rec['f'] .. ' vs ' .. canon}
end
for i = 1, n do
  local t = redis.call('TYPE', KEYS[4 + i])['ok']
  if t ~= 'none' and t ~= 'list' then return invalid('history key ' .. KEYS[4 + i] .. ' holds a ' .. t) end
end
accounts[n + 1] = 'platform:revenue'
local current = redis.call('HMGET', KEYS[2], unpack(accounts))
for i = 1, n + 1 do
  if current[i] and math.abs(tonumber(current[i])) > 4e18 then
    return invalid('account ' .. accounts[i] .. ' is near the 64-bit limit')
  end
end
-- all checks passed: the writes
redis.call('HSET', KEYS[1], aid, cjson.encode({s = sid, f = canon}))
for i = 1, n do
  local adv, p = e[4 + 2 * i], e[5 + 2 * i]
  local neg
  if p == '0' then neg = '0'
  elseif string.sub(p, 1, 1) == '-' then neg = string.sub(p, 2)
  else neg = '-' .. p end
  redis.call('HINCRBY', KEYS[2], accounts[i], neg)
  redis.call('RPUSH', KEYS[4 + i], '{"auction_id":' .. cjson.encode(aid) .. ',"stream_id":"' .. sid ..
    '","created_at_ms":' .. created .. ',"payment_micro":' .. p .. '}')
end
redis.call('HINCRBY', KEYS[2], 'platform:revenue', rev)
return {'applied', sid}
"""

# KEYS: 1 dead (hash), 2 dead-letter stream, 3 meta
# ARGV: 1 stream id, 2 kind, 3 reason, 4 deliveries, 5 consumer, 6 auction id, 7 the entry as JSON
# Idempotent by stream id: a redelivered entry is written to the dead-letter stream only once.
DEAD_LETTER_SCRIPT = r"""
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', 'stream_id', ARGV[1], 'kind', ARGV[2], 'reason', ARGV[3],
  'deliveries', ARGV[4], 'consumer', ARGV[5], 'auction_id', ARGV[6], 'event', ARGV[7])
redis.call('HINCRBY', KEYS[3], 'dead_letters', 1)
if ARGV[2] == 'conflict' then redis.call('HINCRBY', KEYS[3], 'conflicts', 1) end
return 1
"""


@dataclass(frozen=True)
class LedgerKeys:
    applied: str
    balances: str
    meta: str
    duplicates: str
    dead: str
    history_prefix: str

    @classmethod
    def default(cls) -> LedgerKeys:
        p = LEDGER_PREFIX
        return cls(
            applied=p + "applied",
            balances=p + "balances",
            meta=p + "meta",
            duplicates=p + "duplicates",
            dead=p + "dead",
            history_prefix=p + "history:",
        )

    def history(self, advertiser_id: str) -> str:
        return self.history_prefix + advertiser_id


def _s(value: Any) -> str:
    """A reply element as str (clients with or without decode_responses)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    return str(value)


class MalformedEventError(ValueError):
    """A stream entry that cannot be a billing event (the reason is the message)."""


@dataclass(frozen=True)
class StreamEvent:
    """A stream entry parsed into the script's arguments (payments sorted by advertiser id)."""

    stream_id: str
    auction_id: str
    created_at_ms: str
    currency: str
    revenue_micro: str
    payments: tuple[tuple[str, str], ...]


_INT_RE = re.compile(r"-?(0|[1-9][0-9]*)")


def _int_text(value: Any, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedEventError(f"{what} is not an integer: {value!r}")
    return str(value)


def parse_entry(stream_id: str, fields: Mapping[str, str]) -> StreamEvent:
    """Parse the fields of a stream entry; raises MalformedEventError with the reason."""
    version = fields.get("v", EVENT_VERSION)
    if version != EVENT_VERSION:
        raise MalformedEventError(f"unknown event version {version!r}")
    missing = [
        k for k in ("auction_id", "created_at_ms", "currency", "revenue_micro", "payments") if k not in fields
    ]
    if missing:
        raise MalformedEventError(f"missing field(s) {', '.join(missing)}")
    try:
        payments = json.loads(fields["payments"])
    except ValueError as error:
        raise MalformedEventError(f"payments is not JSON: {error}") from error
    if not isinstance(payments, dict):
        raise MalformedEventError("payments is not a JSON object")
    for name in ("created_at_ms", "revenue_micro"):
        text = fields[name]
        if not _INT_RE.fullmatch(text):
            raise MalformedEventError(f"{name} is not an integer: {text!r}")
    pairs = tuple((str(adv), _int_text(payments[adv], f"payment of {adv!r}")) for adv in sorted(payments))
    for text in (fields["auction_id"], fields["currency"], *(adv for adv, _ in pairs)):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise MalformedEventError(f"not UTF-8 text: {text!r}") from error
    return StreamEvent(
        stream_id=stream_id,
        auction_id=fields["auction_id"],
        created_at_ms=fields["created_at_ms"],
        currency=fields["currency"],
        revenue_micro=fields["revenue_micro"],
        payments=pairs,
    )


def _entry_json(fields: Mapping[str, str]) -> str:
    return json.dumps(dict(fields), sort_keys=True, ensure_ascii=False)


def _decode_fields(raw: Any) -> dict[str, str]:
    if not raw:
        return {}
    return {_s(k): _s(v) for k, v in dict(raw).items()}


@dataclass
class _Pending:
    """One entry of the current batch and what happened to it."""

    stream_id: str
    fields: dict[str, str]
    event: StreamEvent | None = None
    outcome: str = ""
    detail: str = ""


# --- consumer ------------------------------------------------------------------------------------


class LedgerConsumer:
    """One member of the ledger consumer group. Safe to run several, and to kill at any point."""

    def __init__(self, redis: aioredis.Redis, settings: Settings, name: str, linger_s: float = 0.0) -> None:
        self.redis = redis
        self.settings = settings
        self.name = name
        self.linger_s = linger_s  # pause between a read and its apply (the embedded consumer)
        self.keys = LedgerKeys.default()
        self._apply_sha: str | None = None
        self._dead_sha: str | None = None
        self._claim_cursor = "0-0"
        self._next_claim_at = 0.0  # time.monotonic() of the next XAUTOCLAIM scan
        # On start, first re-read this consumer's own pending entries (it may have died mid-batch).
        self._own_pending_cursor: str | None = "0-0"
        self.stats: dict[str, int] = defaultdict(int)

    async def ensure_group(self) -> None:
        """Create the stream and the group (from the first entry) if missing; load the scripts."""
        try:
            await self.redis.xgroup_create(
                self.settings.billing_stream, self.settings.billing_group, id="0", mkstream=True
            )
            logger.info(
                "created consumer group %s on %s", self.settings.billing_group, self.settings.billing_stream
            )
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        await self._load_scripts()

    async def _load_scripts(self) -> tuple[str, str]:
        """SCRIPT LOAD both scripts (at start, and again after NOSCRIPT: a restarted Redis forgets them)."""
        apply_sha = _s(await self.redis.script_load(APPLY_SCRIPT))
        dead_sha = _s(await self.redis.script_load(DEAD_LETTER_SCRIPT))
        self._apply_sha, self._dead_sha = apply_sha, dead_sha
        return apply_sha, dead_sha

    # reading ------------------------------------------------------------------------------------

    async def _read(self, stream_id: str, count: int, block_ms: int | None) -> list[tuple[str, Any]]:
        reply = await self.redis.xreadgroup(
            self.settings.billing_group,
            self.name,
            {self.settings.billing_stream: stream_id},
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
                entries.append((_s(entry_id), fields))
        return entries

    async def _autoclaim(self, count: int) -> list[tuple[str, Any]]:
        """Claim entries idle longer than BILLING_CLAIM_IDLE_MS (from dead or stuck consumers).

        An entry deleted from the stream while pending (trimmed, XDEL) must never happen: it is
        logged as an ALERT and recorded in the dead-letter stream (kind ``deleted``).
        """
        reply = await self.redis.xautoclaim(
            self.settings.billing_stream,
            self.settings.billing_group,
            self.name,
            min_idle_time=self.settings.billing_claim_idle_ms,
            start_id=self._claim_cursor,
            count=count,
        )
        self._claim_cursor = _s(reply[0])
        entries = [(_s(entry_id), fields) for entry_id, fields in reply[1] if entry_id is not None]
        unnamed = len(reply[1]) - len(entries)
        deleted_ids = [_s(i) for i in reply[2]] if len(reply) > 2 and reply[2] else []
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
        return [str(len(keys)), *keys, packed, self.settings.currency, self.keys.history_prefix]

    async def _evalsha_all(self, items: list[_Pending]) -> None:
        """One EVALSHA per event, the batch pipelined in one MULTI/EXEC.

        MULTI/EXEC: Redis appends (and with appendfsync always, fsyncs) the batch's AOF once instead of
        once per event-loop turn - several times fewer fsyncs per batch; the price is that Redis runs
        the batch's scripts back to back (about 40 us each). On NOSCRIPT (Redis restarted, Redis 7
        forgets scripts) the script is loaded again and those events rerun - safe, the script is
        idempotent. Any other error of one script makes that event "invalid" (retried, then
        dead-lettered), so one bad entry cannot stall the consumer.
        """
        todo = [item for item in items if item.event is not None]
        for attempt in range(3):
            if not todo:
                return
            sha = self._apply_sha or (await self._load_scripts())[0]
            pipe = self.redis.pipeline(transaction=True)
            for item in todo:
                assert item.event is not None
                pipe.execute_command("EVALSHA", sha, *self._apply_args(item.event))
            results = await pipe.execute(raise_on_error=False)
            retry: list[_Pending] = []
            for item, result in zip(todo, results, strict=True):
                if isinstance(result, NoScriptError):
                    retry.append(item)
                elif isinstance(result, ResponseError):
                    item.outcome, item.detail = "invalid", f"ledger script error: {result}"
                elif isinstance(result, Exception):
                    raise result
                else:
                    item.outcome, item.detail = _s(result[0]), _s(result[1])
            if retry:
                self.stats["script_reloads"] += 1
                logger.warning(
                    "ledger script missing on the server (restart?): loading it again (try %d)", attempt + 1
                )
                self._apply_sha = None
            todo = retry
        raise RuntimeError("the ledger script could not be loaded")

    async def _dead_letter(
        self,
        stream_id: str,
        kind: str,
        reason: str,
        deliveries: int,
        auction_id: str,
        fields: Mapping[str, str],
    ) -> bool:
        keys = [self.keys.dead, self.settings.billing_dead_letter_stream, self.keys.meta]
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
            pipe.xpending_range(
                self.settings.billing_stream, self.settings.billing_group, stream_id, stream_id, 1
            )
        counts: dict[str, int] = {}
        for stream_id, rows in zip(stream_ids, await pipe.execute(), strict=True):
            counts[stream_id] = int(rows[0]["times_delivered"]) if rows else 0
        return counts

    async def process_batch(self) -> int:
        """Claim stuck entries, read a batch, apply each exactly once, XACK. Returns entries handled.

        "Handled" counts every entry taken from the stream in this call, including a malformed one that
        is left pending for another delivery. Blocks up to BILLING_BLOCK_MS when there is nothing.
        """
        if self._apply_sha is None:
            await self.ensure_group()
        size = self.settings.billing_batch_size
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
                    "claimed %d billing entries idle > %d ms",
                    len(claimed),
                    self.settings.billing_claim_idle_ms,
                )
                self.stats["claimed"] += len(claimed)
            seen = {entry_id for entry_id, _ in raw}
            raw += [entry for entry in claimed if entry[0] not in seen]
        if len(raw) < size:
            block = None if raw else self.settings.billing_block_ms
            raw += await self._read(">", size - len(raw), block)
        if not raw:
            return 0
        if self.linger_s > 0:
            # Inside the gateway: the read wakes up the moment an auction's XADD lands, while that
            # auction is still answering; apply after it (~0.5 ms less gateway overhead). The entries
            # stay pending meanwhile: a crash here redelivers them, as at any other point.
            await asyncio.sleep(self.linger_s)

        items: list[_Pending] = []
        for entry_id, fields in raw:
            item = _Pending(stream_id=entry_id, fields=_decode_fields(fields))
            if not item.fields:  # an entry always has fields: this one was deleted while pending
                item.outcome, item.detail = "deleted", DELETED_REASON
            else:
                try:
                    item.event = parse_entry(entry_id, item.fields)
                except MalformedEventError as error:
                    item.outcome, item.detail = "invalid", str(error)
            items.append(item)
        await self._evalsha_all(items)

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

        pause = self.settings.billing_fault_pause_before_ack_s
        if pause > 0:
            logger.warning(
                "fault injection: pausing %.3fs between apply and XACK of %d entries", pause, len(done)
            )
            await asyncio.sleep(pause)
        if done:
            await self.redis.xack(self.settings.billing_stream, self.settings.billing_group, *done)
        return len(items)

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


# --- read side -----------------------------------------------------------------------------------


class LedgerReader:
    """Balances, histories and the state of the stream, for the API and the metrics."""

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = LedgerKeys.default()

    async def advertiser(self, advertiser_id: str, limit: int = 50) -> dict[str, Any]:
        """The advertiser's balance, number of auctions billed and its `limit` latest entries (newest first).

        ``balance_micro`` is the ledger account (minus what it paid); ``paid_micro`` = -balance. An
        advertiser never billed gets zeros.
        """
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(self.keys.balances, ADVERTISER_ACCOUNT_PREFIX + advertiser_id)
        pipe.llen(self.keys.history(advertiser_id))
        pipe.lrange(self.keys.history(advertiser_id), -max(limit, 1), -1)
        balance_raw, auctions_raw, history_raw = await pipe.execute()
        balance = int(_s(balance_raw)) if balance_raw is not None else 0
        history: list[dict[str, Any]] = []
        for raw in reversed(history_raw if limit > 0 else []):
            entry = json.loads(_s(raw))
            entry["payment"] = format_micro(entry["payment_micro"])
            history.append(entry)
        return {
            "advertiser_id": advertiser_id,
            "currency": self.settings.currency,
            "balance_micro": balance,
            "balance": format_micro(balance),
            "paid_micro": -balance,
            "paid": format_micro(-balance),
            "auctions": int(auctions_raw),
            "history": history,
        }

    async def _group_info(self) -> dict[str, Any]:
        try:
            groups = await self.redis.xinfo_groups(self.settings.billing_stream)
        except ResponseError:  # no stream yet
            return {}
        for group in groups:
            info = {_s(k): v for k, v in group.items()}
            if _s(info.get("name")) == self.settings.billing_group:
                return info
        return {}

    async def summary(self) -> dict[str, Any]:
        """Revenue, counters, stream length, pending (delivered, not acked), lag (not yet delivered)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.meta)
        pipe.hlen(self.keys.applied)
        pipe.hget(self.keys.balances, PLATFORM_ACCOUNT)
        pipe.xlen(self.settings.billing_stream)
        pipe.xlen(self.settings.billing_dead_letter_stream)
        meta_raw, applied, revenue_raw, stream_length, dead_length = await pipe.execute()
        meta = {_s(k): int(_s(v)) for k, v in (meta_raw or {}).items()}
        group = await self._group_info()
        pending = int(group.get("pending", 0) or 0)
        lag_capped = False
        lag: int | None = None
        if group:
            raw_lag = group.get("lag")
            if raw_lag is not None:  # Redis >= 7
                lag = int(raw_lag)
            else:
                last = _s(group.get("last-delivered-id", "0-0"))
                # Redis 6.2 has no lag field: count what follows the last delivered id (capped)
                after = await self.redis.xrange(
                    self.settings.billing_stream, f"({last}", "+", count=LAG_COUNT_CAP
                )
                lag = len(after or [])
                lag_capped = lag >= LAG_COUNT_CAP
        else:
            lag = int(stream_length)
        revenue = int(_s(revenue_raw)) if revenue_raw is not None else 0
        return {
            "currency": self.settings.currency,
            "revenue_micro": revenue,
            "revenue": format_micro(revenue),
            "events_applied": int(applied),
            "duplicates": meta.get("duplicates", 0),
            "conflicts": meta.get("conflicts", 0),
            "dead_letters": meta.get("dead_letters", 0),
            "dead_letter_stream_length": int(dead_length),
            "stream_length": int(stream_length),
            "pending": pending,
            "lag": lag,
            "lag_capped": lag_capped,
            "consumers": int(group.get("consumers", 0) or 0),
        }


# --- reconcile -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    kind: str
    subject: str
    expected: str
    actual: str
    detail: str = ""


@dataclass
class ReconcileReport:
    """What `reconcile` found; `ok` when there is no difference (dead letters are reported, not errors)."""

    differences: list[Difference] = field(default_factory=list)
    events_applied: int = 0
    accounts: int = 0
    accounts_sum_micro: int = 0
    revenue_micro: int = 0
    stream_entries: int = 0
    in_flight: int = 0
    dead_letters: int = 0
    audit_records: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    def add(self, kind: str, subject: str, expected: object, actual: object, detail: str = "") -> None:
        self.differences.append(Difference(kind, subject, str(expected), str(actual), detail))


@dataclass(frozen=True)
class _AppliedEvent:
    stream_id: str
    payments: dict[str, int]
    revenue: int


async def _scan_hash(redis: aioredis.Redis, key: str) -> dict[str, str]:
    out: dict[str, str] = {}
    async for k, v in redis.hscan_iter(key, count=1000):
        out[_s(k)] = _s(v)
    return out


def _audit_payments(record: Mapping[str, Any]) -> dict[str, int] | None:
    """The payments of a gateway audit record in micro-units (payments_micro, payments or advertisers)."""
    if isinstance(record.get("payments_micro"), dict):
        return {str(k): int(v) for k, v in record["payments_micro"].items()}
    if isinstance(record.get("payments"), dict):
        return {str(k): to_micro_units(float(v)) for k, v in record["payments"].items()}
    if isinstance(record.get("advertisers"), list):
        return {str(a["id"]): to_micro_units(float(a["payment"])) for a in record["advertisers"]}
    return None


def _id_tuple(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


class _Reconciler:
    """The checks of `reconcile`, one method each, sharing what was read."""

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = LedgerKeys.default()
        self.report = ReconcileReport()
        self.applied: dict[str, _AppliedEvent] = {}
        self.expected_balance: dict[str, int] = defaultdict(int)
        self.expected_auctions: dict[str, int] = defaultdict(int)
        self.stream_auctions: set[str] = set()

    async def run(self) -> ReconcileReport:
        await self.load_applied()
        await self.check_balances()
        await self.check_histories()
        await self.check_stream()
        await self.check_audit_records()
        return self.report

    async def load_applied(self) -> None:
        """Recompute every balance and count from the applied-events record."""
        add = self.report.add
        for auction_id, raw in (await _scan_hash(self.redis, self.keys.applied)).items():
            record = json.loads(raw)
            parts = json.loads(record["f"])  # [created_at_ms, currency, revenue, adv1, p1, adv2, p2, ...]
            currency, revenue = parts[1], int(parts[2])
            payments = {parts[i]: int(parts[i + 1]) for i in range(3, len(parts), 2)}
            if revenue != sum(payments.values()):
                add("event_unbalanced", auction_id, sum(payments.values()), revenue)
            if currency != self.settings.currency:
                add("currency", auction_id, self.settings.currency, currency)
            self.applied[auction_id] = _AppliedEvent(record["s"], payments, revenue)
            for adv, amount in payments.items():
                self.expected_balance[ADVERTISER_ACCOUNT_PREFIX + adv] -= amount
                self.expected_auctions[adv] += 1
            self.expected_balance[PLATFORM_ACCOUNT] += revenue
        self.report.events_applied = len(self.applied)

    async def check_balances(self) -> None:
        add, report = self.report.add, self.report
        balances = {k: int(v) for k, v in (await _scan_hash(self.redis, self.keys.balances)).items()}
        report.accounts = len(balances)
        report.accounts_sum_micro = sum(balances.values())
        report.revenue_micro = balances.get(PLATFORM_ACCOUNT, 0)
        if report.accounts_sum_micro != 0:
            add("accounts_sum", "all accounts", 0, report.accounts_sum_micro, "double entry broken")
        for account in sorted(set(balances) | set(self.expected_balance)):
            expected, actual = self.expected_balance.get(account, 0), balances.get(account, 0)
            if expected != actual:
                add("balance", account, expected, actual, "differs from the sum of the applied events")
        meta = {k: int(v) for k, v in (await _scan_hash(self.redis, self.keys.meta)).items()}
        dead = await self.redis.hlen(self.keys.dead)
        report.dead_letters = int(dead)
        if meta.get("dead_letters", 0) != dead:
            add("dead_letters_counter", "meta", dead, meta.get("dead_letters", 0))

    async def check_histories(self) -> None:
        """Each advertiser's history holds one entry per applied auction, with the applied amount."""
        add = self.report.add
        for adv in sorted(self.expected_auctions):
            raw_entries = await self.redis.lrange(self.keys.history(adv), 0, -1)
            entries = [json.loads(_s(x)) for x in raw_entries]
            seen: set[str] = set()
            for entry in entries:
                aid, amount = entry["auction_id"], int(entry["payment_micro"])
                if aid in seen:
                    add("history_duplicate", adv, "1 entry", "2+ entries", f"auction {aid}")
                seen.add(aid)
                applied = self.applied.get(aid)
                if applied is None or applied.payments.get(adv) != amount:
                    add("history_entry", adv, "an applied payment", amount, f"auction {aid}")
            paid = -self.expected_balance[ADVERTISER_ACCOUNT_PREFIX + adv]
            total = sum(int(e["payment_micro"]) for e in entries)
            if len(entries) != self.expected_auctions[adv] or total != paid:
                expected = f"{self.expected_auctions[adv]} entries, {paid} micro"
                add("history", adv, expected, f"{len(entries)} entries, {total} micro")
        async for key in self.redis.scan_iter(match=self.keys.history_prefix + "*", count=1000):
            adv = _s(key).removeprefix(self.keys.history_prefix)
            if adv not in self.expected_auctions:
                add(
                    "history_orphan",
                    adv,
                    "no history (no applied event)",
                    f"{await self.redis.llen(key)} entries",
                )

    async def _pending_ids(self, group: Mapping[str, Any]) -> set[str]:
        pending: set[str] = set()
        start = "-"
        while group and int(group.get("pending", 0) or 0):
            rows = await self.redis.xpending_range(
                self.settings.billing_stream, self.settings.billing_group, start, "+", 1000
            )
            pending.update(_s(r["message_id"]) for r in rows)
            if len(rows) < 1000:
                break
            start = "(" + _s(rows[-1]["message_id"])
        return pending

    async def check_stream(self) -> None:
        """Every delivered, acknowledged entry is applied, a recorded duplicate, or dead-lettered;
        every applied event is in the stream."""
        add, report = self.report.add, self.report
        group = await LedgerReader(self.redis, self.settings)._group_info()
        last_delivered = _id_tuple(_s(group.get("last-delivered-id", "0-0")) if group else "0-0")
        pending = await self._pending_ids(group)
        dead = await _scan_hash(self.redis, self.keys.dead)
        duplicates = await _scan_hash(self.redis, self.keys.duplicates)
        stream_ids: set[str] = set()
        first_id: str | None = None
        start = "-"
        while True:
            chunk: Any = await self.redis.xrange(self.settings.billing_stream, start, "+", count=1000)
            for entry_id_raw, fields_raw in chunk:
                entry_id = _s(entry_id_raw)
                first_id = first_id or entry_id
                stream_ids.add(entry_id)
                report.stream_entries += 1
                auction_id = _decode_fields(fields_raw).get("auction_id", "")
                self.stream_auctions.add(auction_id)
                if _id_tuple(entry_id) > last_delivered or entry_id in pending:
                    report.in_flight += 1
                elif entry_id in dead:
                    continue
                elif auction_id not in self.applied:
                    add(
                        "unapplied_event",
                        entry_id,
                        "applied or dead-lettered",
                        "neither",
                        f"auction {auction_id}",
                    )
                elif (
                    self.applied[auction_id].stream_id != entry_id and duplicates.get(entry_id) != auction_id
                ):
                    applied_as = self.applied[auction_id].stream_id
                    add(
                        "unrecorded_duplicate",
                        entry_id,
                        f"applied as {applied_as}",
                        "not recorded",
                        auction_id,
                    )
            if len(chunk) < 1000:
                break
            start = "(" + _s(chunk[-1][0])
        trimmed = 0
        for auction_id, applied in self.applied.items():
            if applied.stream_id in stream_ids:
                continue
            if first_id is None or _id_tuple(applied.stream_id) < _id_tuple(first_id):
                trimmed += 1  # trimmed below the oldest pending id: expected, not a difference
            else:
                add("applied_not_in_stream", auction_id, f"stream entry {applied.stream_id}", "missing")
        if trimmed:
            report.notes.append(f"{trimmed} applied events are older than the stream's first entry (trimmed)")

    async def check_audit_records(self) -> None:
        """The gateway's audit records of served auctions (optional input) match what was billed."""
        add, report = self.report.add, self.report
        prefix = AUDIT_KEY_PATTERN.removesuffix("*")
        async for key_raw in self.redis.scan_iter(match=AUDIT_KEY_PATTERN, count=1000):
            key = _s(key_raw)
            raw = await self.redis.get(key)
            if raw is None:
                continue  # expired meanwhile
            try:
                record = json.loads(_s(raw))
                audit = _audit_payments(record)
            except (ValueError, TypeError, KeyError):
                report.notes.append(f"unreadable audit record {key}")
                continue
            if audit is None:
                report.notes.append(f"audit record {key} has no payments")
                continue
            report.audit_records += 1
            auction_id = str(record.get("auction_id") or key.removeprefix(prefix))
            applied = self.applied.get(auction_id)
            if applied is None:
                if auction_id not in self.stream_auctions:
                    add(
                        "served_not_billed", auction_id, "a billing event", "none in the stream or the ledger"
                    )
                continue  # in flight, or dead-lettered (the dead letter carries the reason)
            if applied.payments != audit:
                add(
                    "audit_mismatch",
                    auction_id,
                    json.dumps(audit, sort_keys=True),
                    json.dumps(applied.payments),
                )


async def reconcile(redis: aioredis.Redis, settings: Settings) -> ReconcileReport:
    """Recompute every balance from the applied events; compare with the ledger's accounts, counters
    and histories, with the stream, and with the gateway's audit records. Reads it all into memory.
    """
    return await _Reconciler(redis, settings).run()


# --- processes and commands ----------------------------------------------------------------------


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


async def _consume(settings: Settings, consumer_name: str) -> None:
    from app.redis_store import open_redis

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    handle = await open_redis(settings)
    try:
        consumer = LedgerConsumer(handle.client, settings, consumer_name)
        await consumer.ensure_group()
        logger.info(
            "ledger consumer %s started on %s (stream %s, group %s)",
            consumer_name,
            handle.url,
            settings.billing_stream,
            settings.billing_group,
        )
        await consumer.run(stop)
    finally:
        await handle.close()


def run_consumer_forever(settings: Settings, consumer_name: str | None = None) -> None:
    """`mosaic ledger consume`: run one consumer until SIGTERM/SIGINT (the current batch is finished)."""
    from app.logging_setup import configure_logging

    configure_logging(settings)
    asyncio.run(_consume(settings, consumer_name or default_consumer_name()))


async def _reconcile_once(settings: Settings) -> tuple[ReconcileReport, dict[str, Any]]:
    from app.redis_store import open_redis

    handle = await open_redis(settings)
    try:
        return await reconcile(handle.client, settings), await LedgerReader(handle.client, settings).summary()
    finally:
        await handle.close()


def reconcile_command(settings: Settings) -> int:
    """`mosaic ledger reconcile`: print the result as tables; 0 when the ledger is consistent, else 1."""
    from rich.console import Console
    from rich.table import Table

    report, summary = asyncio.run(_reconcile_once(settings))
    console = Console()
    overview = Table(title="MOSAIC ledger reconcile")
    overview.add_column("check")
    overview.add_column("value", justify="right")
    for label, value in (
        ("events applied", report.events_applied),
        ("accounts", report.accounts),
        ("sum over all accounts (micro)", report.accounts_sum_micro),
        (f"platform revenue ({settings.currency})", format_micro(report.revenue_micro)),
        ("stream entries", report.stream_entries),
        ("in flight (pending or not yet read)", report.in_flight),
        ("pending", summary["pending"]),
        ("lag", summary["lag"]),
        ("duplicates", summary["duplicates"]),
        ("conflicts", summary["conflicts"]),
        ("dead letters", report.dead_letters),
        ("audit records checked", report.audit_records),
        ("differences", len(report.differences)),
    ):
        overview.add_row(label, str(value))
    console.print(overview)
    if report.differences:
        table = Table(title="differences", header_style="bold red")
        for column in ("kind", "subject", "expected", "actual", "detail"):
            table.add_column(column)
        for d in report.differences:
            table.add_row(d.kind, d.subject, d.expected, d.actual, d.detail)
        console.print(table)
    for note in report.notes:
        console.print(f"note: {note}")
    console.print(
        "[green]OK: the ledger matches its events[/green]" if report.ok else "[red]DIFFERENCES FOUND[/red]"
    )
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m app.billing [--consumer-name NAME]``: the consumer without the CLI's imports."""
    parser = argparse.ArgumentParser(
        description="Run one MOSAIC ledger consumer (settings from the environment)."
    )
    parser.add_argument("--consumer-name", default=None)
    args = parser.parse_args(argv)
    run_consumer_forever(Settings(), consumer_name=args.consumer_name)


if __name__ == "__main__":
    main()
