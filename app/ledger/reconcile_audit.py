"""Reconcile's check of the gateway's audit records against what was billed, and its report.

Job: `AuditRecordChecks` (a part of app.ledger.reconcile's reconciler) compares every audit record
with the applied events: those in Redis (``mosaic:auction:*``) and, with ARCHIVE_DSN (issue 36),
those archived to PostgreSQL that Redis no longer holds, read through `ArchivedRecords` (implemented
by app.archive.store.ArchiveStore, which this layer may not import). A test auction, a no-fill and a
render charge pending or expired must not be billed; a billed one must, with the recorded amounts.
`ReconcileReport` and `Difference` are what reconcile returns. Imports redis, app.settings and
app.ledger (events, keys, render) only. See docs/DESIGN.md § Billing and § Archive.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis.asyncio as aioredis

from app.ledger.events import to_micro_units
from app.ledger.keys import AUCTION_KEY_PREFIX, as_str, hot_key
from app.ledger.render import charge_key
from app.settings import Settings

AUDIT_KEY_PREFIX = AUCTION_KEY_PREFIX


class ArchivedRecords(Protocol):
    """The audit records archived to PostgreSQL (app.archive.store.ArchiveStore)."""

    def archived_records(self, since_ms: int | None) -> AsyncIterator[tuple[str, str]]:
        """(auction id, the record's exact text) of every archived record created at or after
        `since_ms` (all when None), in batches."""
        ...

    async def archived_count_before(self, before_ms: int) -> int: ...


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
    archived_records: int = 0  # of which read from the archive (ARCHIVE_DSN; Redis no longer held them)
    test_records: int = 0
    no_fill_records: int = 0  # no-fills (billing "none": nobody bid, nothing to bill)
    # BILLING_MODE=render: audit records by the state of their charge (pending, billed, expired)
    render: dict[str, int] = field(default_factory=dict)
    settled_events: int = 0
    campaigns: int = 0  # campaign budget keys checked
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    def add(self, kind: str, subject: str, expected: object, actual: object, detail: str = "") -> None:
        self.differences.append(Difference(kind, subject, str(expected), str(actual), detail))


def _audit_payments(record: Mapping[str, Any]) -> dict[str, int] | None:
    """The payments of a gateway audit record in micro-units (payments_micro, payments or advertisers)."""
    if isinstance(record.get("payments_micro"), dict):
        return {str(k): int(v) for k, v in record["payments_micro"].items()}
    if isinstance(record.get("payments"), dict):
        return {str(k): to_micro_units(float(v)) for k, v in record["payments"].items()}
    if isinstance(record.get("advertisers"), list):
        return {str(a["id"]): to_micro_units(float(a["payment"])) for a in record["advertisers"]}
    return None


class AuditRecordChecks:
    """The audit record checks of the reconciler (it sets these attributes)."""

    redis: aioredis.Redis
    settings: Settings
    report: ReconcileReport
    applied: Mapping[str, Any]
    stream_auctions: set[str]
    archived: ArchivedRecords | None

    async def check_audit_records(self) -> None:
        """The gateway's audit records of served auctions match what was billed: those in Redis, then
        (with an archive) those archived to PostgreSQL that Redis no longer holds. Archived records
        created before the ledger's retention (settled: their markers trimmed, nothing left to compare
        them with) are not read, only counted."""
        # An auction created before this may have been settled (its marker trimmed): trim.lua removes
        # a marker only when its entry is older than BILLING_RETENTION_S (Redis clock; the gateway's
        # created_at_ms may lag it by up to the re-append window).
        settled_before_ms = (time.time() - self.settings.billing_retention_s) * 1000
        settled_before_ms += self.settings.billing_reappend_window_s * 1000
        seen: set[str] = set()
        prefix = hot_key(self.settings, AUDIT_KEY_PREFIX)  # with the ledger shard's tag on a cluster
        async for key_raw in self.redis.scan_iter(match=prefix + "*", count=1000):
            key = as_str(key_raw)
            raw = await self.redis.get(key)
            if raw is not None:  # else expired (or archived) meanwhile: read from the archive below
                seen.add(key.removeprefix(prefix))
                await self._check_record(key, as_str(raw), settled_before_ms)
        if self.archived is None:
            return
        # Read after the Redis scan: a record dropped from Redis meanwhile was committed here first.
        since_ms = int(settled_before_ms) if self.report.settled_events else None
        async for auction_id, text in self.archived.archived_records(since_ms):
            if auction_id not in seen:
                self.report.archived_records += 1
                await self._check_record(AUDIT_KEY_PREFIX + auction_id, text, settled_before_ms)
        if since_ms is not None:
            older = await self.archived.archived_count_before(since_ms)
            if older:
                self.report.notes.append(
                    f"{older} archived records are older than the ledger's retention (settled)"
                )

    async def _check_record(self, key: str, text: str, settled_before_ms: float) -> None:
        """One audit record against what was applied (or must never be)."""
        add, report = self.report.add, self.report
        try:
            record = json.loads(text)
            audit = _audit_payments(record)
        except (ValueError, TypeError, KeyError):
            report.notes.append(f"unreadable audit record {key}")
            return
        if audit is None:
            report.notes.append(f"audit record {key} has no payments")
            return
        report.audit_records += 1
        auction_id = str(record.get("auction_id") or key.rpartition(AUDIT_KEY_PREFIX)[2])  # tagged or not
        if await self._never_billed(record, auction_id):
            return
        applied = self.applied.get(auction_id)
        if applied is None:
            created = record.get("created_at_ms")
            if report.settled_events and isinstance(created, int) and created < settled_before_ms:
                return  # billed and settled by the trim (its amounts are in the settled totals)
            if auction_id not in self.stream_auctions:
                add("served_not_billed", auction_id, "a billing event", "none in the stream or the ledger")
            return  # in flight, or dead-lettered (the dead letter carries the reason)
        if applied.payments != audit:
            add("audit_mismatch", auction_id, json.dumps(audit, sort_keys=True), json.dumps(applied.payments))

    async def _never_billed(self, record: Mapping[str, Any], auction_id: str) -> bool:
        """A test auction, a no-fill, or a render charge still pending or expired: it must not be billed (a
        difference if it is). False for the records that must be (billed, the default)."""
        billing = record.get("billing", "billed")
        if billing == "test" or record.get("test"):
            self.report.test_records += 1
            state = "test"
        elif billing == "none":
            self.report.no_fill_records += 1
            state = "no-fill"
        elif billing == "pending":
            raw = await self.redis.hget(charge_key(auction_id, self.settings), "state")
            state = as_str(raw) if raw is not None else "expired"
            self.report.render[state] = self.report.render.get(state, 0) + 1
            if state == "billed":
                return False
        else:
            return False
        if auction_id in self.applied or auction_id in self.stream_auctions:
            self.report.add("billed_unbillable", auction_id, f"never billed ({state})", "billed")
        return True
