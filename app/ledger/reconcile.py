"""Reconcile: recompute the ledger from its applied events and compare it with everything else.

Job: `reconcile` checks the balances, counters and histories against the applied-events record, the
stream against what was applied, dead-lettered or recorded as a duplicate, and the gateway's audit
records against what was billed (``mosaic ledger reconcile``, app.ledger.commands, prints the
result): a test auction, a no-fill and a render charge pending or expired must not be billed; a billed one
must. Markers and history entries that trim.lua removed (older than BILLING_RETENTION_S) are
counted from their settled totals (``mosaic:ledger:settled``): balance = settled + remaining
markers. The campaign budgets are checked against the same events by app.ledger.reconcile_budget,
the audit records (in Redis and, with ARCHIVE_DSN, archived to PostgreSQL) by
app.ledger.reconcile_audit. Reads everything into memory. Imports app.settings and app.ledger (keys,
reader, reconcile_audit, reconcile_budget) only. See docs/DESIGN.md § Billing.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from app.ledger.keys import (
    ADVERTISER_ACCOUNT_PREFIX,
    PLATFORM_ACCOUNT,
    LedgerKeys,
    as_str,
    decode_fields,
    stream_key,
)
from app.ledger.reader import LedgerReader
from app.ledger.reconcile_audit import ArchivedRecords, AuditRecordChecks, Difference, ReconcileReport
from app.ledger.reconcile_budget import add_campaign_payments, check_budgets, entry_campaign_payments
from app.settings import Settings

__all__ = ["ArchivedRecords", "Difference", "ReconcileReport", "reconcile"]


@dataclass(frozen=True)
class _AppliedEvent:
    stream_id: str
    payments: dict[str, int]
    revenue: int


async def _scan_hash(redis: aioredis.Redis, key: str) -> dict[str, str]:
    out: dict[str, str] = {}
    async for k, v in redis.hscan_iter(key, count=1000):
        out[as_str(k)] = as_str(v)
    return out


def _id_tuple(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


class _Reconciler(AuditRecordChecks):
    """The checks of `reconcile`, one method each, sharing what was read."""

    def __init__(
        self, redis: aioredis.Redis, settings: Settings, archived: ArchivedRecords | None = None
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.archived = archived
        self.keys = LedgerKeys.of(settings)
        self.report = ReconcileReport()
        self.applied: dict[str, _AppliedEvent] = {}
        self.expected_balance: dict[str, int] = defaultdict(int)
        self.expected_auctions: dict[str, int] = defaultdict(int)
        self.settled_balance: dict[str, int] = defaultdict(int)
        self.stream_auctions: set[str] = set()
        # per campaign: applied + settled + in-flight + dead-lettered payments (what spent_total must be)
        self.campaign_spent: dict[str, int] = defaultdict(int)

    async def run(self) -> ReconcileReport:
        await self.load_applied()
        await self.check_balances()
        await self.check_histories()
        await self.check_stream()
        await self.check_audit_records()
        self.report.campaigns = await check_budgets(self.redis, self.campaign_spent, self.report.add)
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
            add_campaign_payments(self.campaign_spent, payments, record.get("c"))
            for adv, amount in payments.items():
                self.expected_balance[ADVERTISER_ACCOUNT_PREFIX + adv] -= amount
                self.expected_auctions[adv] += 1
            self.expected_balance[PLATFORM_ACCOUNT] += revenue
        self.report.events_applied = len(self.applied)
        for name, value in (await _scan_hash(self.redis, self.keys.settled)).items():
            if name.startswith("balance:"):
                account = name.removeprefix("balance:")
                self.settled_balance[account] += int(value)
                self.expected_balance[account] += int(value)
            elif name == "events":
                self.report.settled_events = int(value)
            elif name.startswith("campaign:"):
                self.campaign_spent[name.removeprefix("campaign:")] += int(value)

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
            entries = [json.loads(as_str(x)) for x in raw_entries]
            seen: set[str] = set()
            for entry in entries:
                aid, amount = entry["auction_id"], int(entry["payment_micro"])
                if aid in seen:
                    add("history_duplicate", adv, "1 entry", "2+ entries", f"auction {aid}")
                seen.add(aid)
                applied = self.applied.get(aid)
                if applied is None or applied.payments.get(adv) != amount:
                    add("history_entry", adv, "an applied payment", amount, f"auction {aid}")
            account = ADVERTISER_ACCOUNT_PREFIX + adv
            paid = -(self.expected_balance[account] - self.settled_balance.get(account, 0))
            total = sum(int(e["payment_micro"]) for e in entries)
            if len(entries) != self.expected_auctions[adv] or total != paid:
                expected = f"{self.expected_auctions[adv]} entries, {paid} micro"
                add("history", adv, expected, f"{len(entries)} entries, {total} micro")
        async for key in self.redis.scan_iter(match=self.keys.history_prefix + "*", count=1000):
            adv = as_str(key).removeprefix(self.keys.history_prefix)
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
                stream_key(self.settings), self.settings.billing_group, start, "+", 1000
            )
            pending.update(as_str(r["message_id"]) for r in rows)
            if len(rows) < 1000:
                break
            start = "(" + as_str(rows[-1]["message_id"])
        return pending

    async def check_stream(self) -> None:
        """Every delivered, acknowledged entry is applied, a recorded duplicate, or dead-lettered;
        every applied event is in the stream."""
        group = await LedgerReader(self.redis, self.settings)._group_info()
        last_delivered = _id_tuple(as_str(group.get("last-delivered-id", "0-0")) if group else "0-0")
        pending = await self._pending_ids(group)
        dead = await _scan_hash(self.redis, self.keys.dead)
        duplicates = await _scan_hash(self.redis, self.keys.duplicates)
        stream_ids: list[str] = []
        start = "-"
        while True:
            chunk: Any = await self.redis.xrange(stream_key(self.settings), start, "+", count=1000)
            for entry_id_raw, fields_raw in chunk:
                entry_id = as_str(entry_id_raw)
                stream_ids.append(entry_id)
                self.report.stream_entries += 1
                fields = decode_fields(fields_raw)
                auction_id = fields.get("auction_id", "")
                if _id_tuple(entry_id) > last_delivered or entry_id in pending:
                    self.report.in_flight += 1
                    entry_campaign_payments(self.campaign_spent, fields)  # posted, not yet applied
                elif (
                    entry_id in dead
                    and auction_id not in self.applied
                    and auction_id not in self.stream_auctions
                ):
                    entry_campaign_payments(self.campaign_spent, fields)  # shown, posted, never applied
                elif entry_id not in dead:
                    self._check_settled_entry(entry_id, auction_id, duplicates)
                self.stream_auctions.add(auction_id)
            if len(chunk) < 1000:
                break
            start = "(" + as_str(chunk[-1][0])
        self._check_applied_in_stream(stream_ids)

    def _check_settled_entry(self, entry_id: str, auction_id: str, duplicates: Mapping[str, str]) -> None:
        """One delivered, acknowledged, not dead-lettered entry: applied, or a recorded duplicate."""
        if auction_id not in self.applied:
            if duplicates.get(entry_id) != auction_id:  # else: a recorded duplicate whose marker was trimmed
                self.report.add(
                    "unapplied_event",
                    entry_id,
                    "applied or dead-lettered",
                    "neither",
                    f"auction {auction_id}",
                )
        elif self.applied[auction_id].stream_id != entry_id and duplicates.get(entry_id) != auction_id:
            applied_as = self.applied[auction_id].stream_id
            self.report.add(
                "unrecorded_duplicate", entry_id, f"applied as {applied_as}", "not recorded", auction_id
            )

    def _check_applied_in_stream(self, stream_ids: list[str]) -> None:
        """Every applied event's entry is still in the stream, unless trimmed below its first entry."""
        present = set(stream_ids)
        first_id = stream_ids[0] if stream_ids else None
        trimmed = 0
        for auction_id, applied in self.applied.items():
            if applied.stream_id in present:
                continue
            if first_id is None or _id_tuple(applied.stream_id) < _id_tuple(first_id):
                trimmed += 1  # trimmed below the oldest pending id: expected, not a difference
            else:
                self.report.add(
                    "applied_not_in_stream", auction_id, f"stream entry {applied.stream_id}", "missing"
                )
        if trimmed:
            self.report.notes.append(
                f"{trimmed} applied events are older than the stream's first entry (trimmed)"
            )


async def reconcile(
    redis: aioredis.Redis, settings: Settings, archived: ArchivedRecords | None = None
) -> ReconcileReport:
    """Recompute every balance from the applied events; compare with the ledger's accounts, counters
    and histories, with the stream, and with the gateway's audit records: those in Redis and, with
    `archived` (ARCHIVE_DSN: app.archive's store), those archived to PostgreSQL. Reads it all into memory.
    """
    return await _Reconciler(redis, settings, archived).run()
