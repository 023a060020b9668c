"""Idempotency keys of `POST /auction` (Stripe semantics), kept in Redis.

Job: the replay check before any model work (`IdempotencyStore.lookup`: one GET, the stored outcome
to replay, a refusal, or free), taking the key (`claim`: SET NX of a running marker), giving it back
when nothing is stored (`release`), storing a failure's outcome (`store_failure`), and saying what
the final write must check and set (`IdempotencyWrite`, used by `app.ledger.producer` inside its
MULTI/EXEC). Imports app.settings and app.ledger (cluster, keys, render, scripts:
idempotency_*.lua) only.

A replay says what the answer says now where it has changed since: a render-mode auction's stored
`billing: "pending"` is replaced by its charge's state (`billed`, `expired`), as `GET
/auctions/{id}` says it; every other byte is the stored answer's.

One Redis string per (API key, idempotency key): ``mosaic:idem:<key id>:<sha256 of the key>`` (the
key id is a prefix of the SHA-256 of the bearer token, never the token). Its JSON value is either

* running: ``{"state": "running", "fp": <fingerprint>, "owner": <random>}``, SET NX with a lease
  (PX) of the auction's deadline + BILLING_APPEND_TIMEOUT_S + LEASE_MARGIN_S: a gateway killed
  mid-auction leaves it, and it lapses on its own, so a retry runs the auction afresh;
* done: ``{"state": "done", "fp", "status", "body", "auction_id"}``, kept IDEMPOTENCY_TTL_S;
* done by reference (issue 36, with ARCHIVE_DSN, a stored auction's answer): ``{"state": "done", "fp",
  "status", "auction_id", "ref": {"c": include_candidates, "h": <first 128 bits of the answer's
  SHA-256, hex>}}`` (~200 B instead of the answer's ~1-6 KB): the answer is rebuilt from the auction's
  record (`AnswerSource`: Redis, then the PostgreSQL archive) and must hash to ``h``, else the replay
  fails (`IdempotencyOutcomeError`, 500) rather than answer other bytes. The writer stores a reference
  only after checking that the record's text rebuilds the answer byte for byte (app.auction.answers).

With appendfsync always every Redis write waits for an fsync (~4 ms on a plain disk), reads do not:
so the replay check is a read, and the claim's write is sent as model work begins and overlaps it;
the auction is cancelled (409) if the claim is lost, and its final write waits for the claim.

Invariants: a done value is written only over this request's own running value (or over nothing,
its lease having lapsed unclaimed): the final write WATCHes the key and EXEC fails if anyone else
touched it, `store_failure` compares and sets in one script. So two gateways can never both store
(and bill) one key. The fingerprint is the SHA-256 of the validated body as canonical JSON (sorted
keys, defaults filled in): the same parameters spelled differently are the same request.
See docs/DESIGN.md § Billing (idempotency keys).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

import redis.asyncio as aioredis

from app.ledger.cluster import wait_replicated
from app.ledger.keys import as_str, hot_tag
from app.ledger.render import RenderLedger
from app.ledger.scripts import IDEMPOTENCY_RELEASE_SCRIPT, IDEMPOTENCY_STORE_SCRIPT
from app.settings import Settings

IDEMPOTENCY_PREFIX = "mosaic:idem:"
HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
# What the header may be: 1-255 visible ASCII characters (Stripe allows 255).
KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
LEASE_MARGIN_S = 2.0


class IdempotencyMismatchError(Exception):
    """The key was used before with different parameters: 422 naming `Idempotency-Key`."""


class IdempotencyInProgressError(Exception):
    """The key's first request is still running: 409 (retry later)."""


class IdempotencyLostError(Exception):
    """This request's lease lapsed and another request took the key: nothing written (409)."""


class IdempotencyOutcomeError(Exception):
    """A by-reference outcome cannot be replayed byte for byte (its record is gone, or rebuilds to other
    bytes): 500 naming the cause, never a different answer."""


def fingerprint(payload: Mapping[str, Any]) -> str:
    """SHA-256 of the request's parameters as canonical JSON."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


def redis_key(key_id: str, idempotency_key: str, tag: str = "") -> str:
    """The key's Redis name; `tag`: the ledger shard's hash tag on a Redis Cluster (app.ledger.keys)."""
    digest = hashlib.sha256(idempotency_key.encode("ascii", errors="backslashreplace")).hexdigest()
    return f"{tag}{IDEMPOTENCY_PREFIX}{key_id}:{digest}"


@dataclass(frozen=True)
class IdempotencyClaim:
    """The right to run one keyed request: the key and this request's running value."""

    key: str
    running_value: str
    fingerprint: str


@dataclass(frozen=True)
class AnswerRef:
    """Where a by-reference outcome's answer is rebuilt from: its auction's record, shown with or without
    the candidate table, and the digest the rebuilt bytes must have."""

    auction_id: str
    candidates: bool
    digest: str


class AnswerSource(Protocol):
    """Rebuilds an answer from its auction's record (app.auction.answers); None when no record is found."""

    async def answer(self, ref: AnswerRef) -> str | None: ...


def answer_digest(body: str) -> str:
    """The first 128 bits of the answer's SHA-256 (hex): what a rebuilt answer must hash to."""
    return hashlib.sha256(body.encode("utf-8", errors="surrogatepass")).hexdigest()[:32]


@dataclass(frozen=True)
class StoredOutcome:
    """A finished request's answer, replayed as is (but for a render charge's state); `body` is None
    while a by-reference outcome is not yet rebuilt (`ref`)."""

    status: int
    body: str | None
    auction_id: str | None = None
    ref: AnswerRef | None = None


@dataclass(frozen=True)
class IdempotencyWrite:
    """What the producer's MULTI/EXEC sets for the key (after WATCHing it): the done value."""

    claim: IdempotencyClaim
    value: str
    ttl_s: int


def done_value(claim: IdempotencyClaim, status: int, body: str, auction_id: str | None) -> str:
    return json.dumps(
        {"state": "done", "fp": claim.fingerprint, "status": status, "body": body, "auction_id": auction_id},
        separators=(",", ":"),
    )


def done_ref_value(claim: IdempotencyClaim, status: int, ref: AnswerRef) -> str:
    """The done value that names the answer by its record instead of copying it (module docstring)."""
    return json.dumps(
        {
            "state": "done",
            "fp": claim.fingerprint,
            "status": status,
            "auction_id": ref.auction_id,
            "ref": {"c": ref.candidates, "h": ref.digest},
        },
        separators=(",", ":"),
    )


def _judge(raw: Any, fp: str) -> StoredOutcome | None:
    """What a key's current value means for a request with fingerprint `fp` (None: free)."""
    if raw is None:
        return None
    record = json.loads(as_str(raw))
    if record.get("fp") != fp:
        raise IdempotencyMismatchError(
            f"{HEADER} reused with different parameters (a key stands for one request; "
            "use a new key for a new request)"
        )
    if record.get("state") != "done":
        raise IdempotencyInProgressError(
            f"a request with this {HEADER} is still running; retry after it finishes"
        )
    ref = record.get("ref")
    if isinstance(ref, dict):
        answer = AnswerRef(str(record["auction_id"]), bool(ref["c"]), str(ref["h"]))
        return StoredOutcome(int(record["status"]), None, answer.auction_id, answer)
    return StoredOutcome(int(record["status"]), str(record["body"]), record.get("auction_id"))


def running_value(fp: str) -> str:
    """A new running marker for a request with fingerprint ``fp`` (its owner token is random)."""
    return json.dumps({"state": "running", "fp": fp, "owner": secrets.token_hex(8)}, separators=(",", ":"))


def owned(current: Any, claim: IdempotencyClaim) -> bool:
    """The key holds this request's running value, or nothing (its lease lapsed, no one else claimed)."""
    return current is None or as_str(current) == claim.running_value


class IdempotencyStore:
    """Claims, releases and failure outcomes of idempotency keys (the success is the producer's write)."""

    def __init__(
        self, redis: aioredis.Redis, settings: Settings, answers: AnswerSource | None = None
    ) -> None:
        self.redis = redis
        self.settings = settings
        # Where by-reference outcomes are rebuilt from (set by app.auction.service); without one, none
        # is written (`by_reference`) and none can be replayed.
        self.answers = answers

    def lease_ms(self, deadline_s: float) -> int:
        return int((deadline_s + self.settings.billing_append_timeout_s + LEASE_MARGIN_S) * 1000)

    async def lookup(
        self, key_id: str, idempotency_key: str, fp: str, own: str | None = None
    ) -> StoredOutcome | None:
        """The replay check (one GET, no write): the stored outcome, or None when the key is free.

        ``own``: this request's running value (:func:`running_value`): the request's own claim, sent
        beside this read, may reach Redis first; it counts as free. Raises IdempotencyMismatchError
        when the key was used with other parameters, IdempotencyInProgressError while its first
        request runs.
        """
        raw = await self.redis.get(redis_key(key_id, idempotency_key, hot_tag(self.settings)))
        if own is not None and raw is not None and as_str(raw) == own:
            return None
        outcome = _judge(raw, fp)
        if outcome is None:
            return None
        await wait_replicated(self.redis, self.settings)  # a cluster: replay only what a replica has
        return await self._charge_state_now(await self._rebuilt(outcome))

    async def _rebuilt(self, outcome: StoredOutcome) -> StoredOutcome:
        """A by-reference outcome with its answer rebuilt from the record, checked against its digest."""
        ref = outcome.ref
        if ref is None:
            return outcome
        if self.answers is None:
            raise IdempotencyOutcomeError(f"{HEADER}: the stored answer names a record; no reader is set")
        body = await self.answers.answer(ref)  # Redis, then the archive (ArchiveUnavailableError: 503)
        if body is None:
            raise IdempotencyOutcomeError(
                f"{HEADER}: the record of auction {ref.auction_id} that holds the stored answer is gone "
                "(expired unarchived, or dropped by the archive's retention)"
            )
        if answer_digest(body) != ref.digest:
            raise IdempotencyOutcomeError(
                f"{HEADER}: the record of auction {ref.auction_id} no longer rebuilds the stored answer "
                "(its digest differs): not replayed"
            )
        return replace(outcome, body=body)

    async def _charge_state_now(self, outcome: StoredOutcome) -> StoredOutcome:
        """`outcome` with a pending render charge's state now (one more read, only for those)."""
        body = outcome.body
        if outcome.status != 200 or outcome.auction_id is None or body is None:
            return outcome
        if '"billing":"pending"' not in body:
            return outcome
        answer = json.loads(body)
        if answer.get("billing") != "pending":
            return outcome
        # As GET /auctions/{id}: a charge gone with its hash (AUDIT_TTL_S) was never rendered in time.
        state = await RenderLedger(self.redis, self.settings).state(outcome.auction_id) or "expired"
        if state == "pending":
            return outcome
        answer["billing"] = state
        return replace(outcome, body=json.dumps(answer, ensure_ascii=False, separators=(",", ":")))

    async def claim(
        self, key_id: str, idempotency_key: str, fp: str, deadline_s: float, running: str | None = None
    ) -> IdempotencyClaim:
        """Take the key: SET NX of the running marker ``running`` (default: a new one) with its
        lease. Raises as `lookup` when another request has it (IdempotencyInProgressError)."""
        key = redis_key(key_id, idempotency_key, hot_tag(self.settings))
        running = running if running is not None else running_value(fp)
        for _ in range(3):  # the key may lapse between the SET NX and the GET: try again
            if await self.redis.set(key, running, nx=True, px=self.lease_ms(deadline_s)):
                return IdempotencyClaim(key=key, running_value=running, fingerprint=fp)
            raw = await self.redis.get(key)
            if raw is not None:
                _judge(raw, fp)
                break  # done meanwhile: the retry will be answered the replay
        raise IdempotencyInProgressError(f"a request with this {HEADER} is still running; retry later")

    def write_for(self, claim: IdempotencyClaim, status: int, body: str, auction_id: str) -> IdempotencyWrite:
        return IdempotencyWrite(
            claim, done_value(claim, status, body, auction_id), self.settings.idempotency_ttl_s
        )

    @property
    def by_reference(self) -> bool:
        """Store stored auctions' outcomes by reference: only with an archive (ARCHIVE_DSN), where a
        record outlives the key (archived before AUDIT_TTL_S ends, kept ARCHIVE_RETENTION_DAYS >= 1 day),
        and a source to rebuild them from. Without one a record may expire before its key: a copy."""
        return bool(self.settings.archive_dsn) and self.answers is not None

    def write_ref_for(self, claim: IdempotencyClaim, status: int, ref: AnswerRef) -> IdempotencyWrite:
        return IdempotencyWrite(claim, done_ref_value(claim, status, ref), self.settings.idempotency_ttl_s)

    async def store_failure(self, claim: IdempotencyClaim, status: int, body: str) -> bool:
        """Store a failure's outcome (a 5xx after model work began) if the key is still ours."""
        value, ttl = done_value(claim, status, body, None), self.settings.idempotency_ttl_s
        stored = await self.redis.eval(
            IDEMPOTENCY_STORE_SCRIPT, 1, claim.key, claim.running_value, value, str(ttl)
        )
        return bool(stored)

    async def release(self, claim: IdempotencyClaim) -> None:
        """Give the key back (nothing stored: refused, abandoned): a retry runs afresh."""
        await self.redis.eval(IDEMPOTENCY_RELEASE_SCRIPT, 1, claim.key, claim.running_value)
