""" "Has budget left" for the selection step: one budget-state read for a batch of candidates.

Selection may know whether a campaign can still spend, nothing more (docs/DESIGN.md § Selection: bids
cannot buy eligibility). `BudgetGate.with_budget` reads the candidates' states on each one's campaign
day (its own time zone) in one round trip and answers the ids with something left today and in total
(a campaign with no limit always has). `CapGate`: whether this user reached a campaign's frequency cap
(a `select` request with a `user_id`). Imports the budget and frequency ledgers.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol
from zoneinfo import ZoneInfo

from app.contract.result import ExclusionReason
from app.ledger.budget import BudgetLedger, BudgetLimits
from app.ledger.frequency import FrequencyHold, FrequencyLedger, user_hash
from app.selection.registry_vectors import CatalogEntry


class Gate(Protocol):
    """A check of eligible candidates that needs I/O: the ids it leaves out, with the reason."""

    async def exclusions(
        self, entries: Sequence[CatalogEntry], now_ms: int
    ) -> dict[str, ExclusionReason]: ...


def entry_day(entry: CatalogEntry, now_ms: int) -> str:
    """The campaign's day at `now_ms` (as app.campaigns.eligibility.campaign_day, from the entry)."""
    return datetime.fromtimestamp(now_ms // 1000, ZoneInfo(entry.time_zone)).date().isoformat()


class BudgetGate:
    """Which candidates have budget left (module docstring)."""

    def __init__(self, budgets: BudgetLedger) -> None:
        self.budgets = budgets

    async def exclusions(self, entries: Sequence[CatalogEntry], now_ms: int) -> dict[str, ExclusionReason]:
        if not entries:
            return {}
        days = [entry_day(entry, now_ms) for entry in entries]
        states = await self.budgets.states([e.id for e in entries], days, now_ms)
        out: dict[str, ExclusionReason] = {}
        for entry, state in zip(entries, states, strict=True):
            remaining = state.remaining(BudgetLimits(entry.daily_micro, entry.total_micro))
            if remaining is not None and remaining <= 0:
                out[entry.id] = "out_of_budget"
        return out


class CapGate:
    """Which candidates this user has capped (one request's gate: `select` with a `user_id`): a campaign
    at its cap is replaced by the next relevant one. A check, not a reservation: the resolver's atomic
    reservation still decides (docs/DESIGN.md § Frequency caps)."""

    def __init__(self, frequency: FrequencyLedger, user_id: str) -> None:
        self.frequency = frequency
        self.user = user_hash(user_id)

    async def exclusions(self, entries: Sequence[CatalogEntry], now_ms: int) -> dict[str, ExclusionReason]:
        capped = [entry for entry in entries if entry.frequency_cap is not None]
        holds = [
            FrequencyHold(e.id, self.user, e.frequency_cap.max_auctions, e.frequency_cap.per_seconds)
            for e in capped
            if e.frequency_cap is not None
        ]
        if not holds:
            return {}
        counts = await self.frequency.count_all(holds, now_ms)
        return {
            hold.campaign_id: "frequency_capped"
            for hold, count in zip(holds, counts, strict=True)
            if count.posted + count.pending >= hold.max_auctions
        }
