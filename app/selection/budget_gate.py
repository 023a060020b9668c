""" "Has budget left" for the selection step: one budget-state read for a batch of candidates.

Selection may know whether a campaign can still spend, nothing more (docs/DESIGN.md § Selection: bids
cannot buy eligibility). `BudgetGate.with_budget` reads the candidates' states on each one's campaign
day (its own time zone) in one round trip and answers the ids with something left today and in total
(a campaign with no limit always has). Imports the budget ledger and the standard library.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from app.ledger.budget import BudgetLedger, BudgetLimits
from app.selection.registry_vectors import CatalogEntry


def entry_day(entry: CatalogEntry, now_ms: int) -> str:
    """The campaign's day at `now_ms` (as app.campaigns.eligibility.campaign_day, from the entry)."""
    return datetime.fromtimestamp(now_ms // 1000, ZoneInfo(entry.time_zone)).date().isoformat()


class BudgetGate:
    """Which candidates have budget left (module docstring)."""

    def __init__(self, budgets: BudgetLedger) -> None:
        self.budgets = budgets

    async def with_budget(self, entries: Sequence[CatalogEntry], now_ms: int) -> set[str]:
        if not entries:
            return set()
        days = [entry_day(entry, now_ms) for entry in entries]
        states = await self.budgets.states([e.id for e in entries], days, now_ms)
        left: set[str] = set()
        for entry, state in zip(entries, states, strict=True):
            remaining = state.remaining(BudgetLimits(entry.daily_micro, entry.total_micro))
            if remaining is None or remaining > 0:
                left.add(entry.id)
        return left
