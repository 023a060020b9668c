""" "Has budget left" for the selection step: one budget-state read for a batch of candidates.

Selection may know whether a campaign can still spend, nothing more (docs/DESIGN.md § Selection: bids
cannot buy eligibility). `BudgetGate.with_budget` reads the candidates' states on each one's campaign
day (its own time zone) in one round trip and answers the ids with something left today and in total
(a campaign with no limit always has). Imports the budget ledger and the standard library.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol
from zoneinfo import ZoneInfo

from app.contract.result import ExclusionReason
from app.ledger.budget import BudgetLedger, BudgetLimits
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
