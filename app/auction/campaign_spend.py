"""The auction's campaign-budget steps, in the order `AuctionService.run` takes them.

Job: `hold` (the pre-authorisation holds, started beside the model work), `fit` (after the mechanism:
every campaign's payment within its budget — within its hold, or reserved then), `void` (a failed
auction's holds, reservations and cap slots go back) and `post_rendered` (a rendered charge's post with
its pacing steps and captured payments). Imports the campaigns' spender and resolver, the sampler's
seed names and the auction's result types; see docs/DESIGN.md § Cost on the reply path.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from app.auction.engine_client import derive_seed
from app.auction.observers import AuctionObserver
from app.auction.result import ResolvedAuction
from app.auction.run_control import clock_ms
from app.auction.sampler import SEED_ALLOCATION, StageClock
from app.campaigns.participants import CampaignResolver, Participants
from app.campaigns.spend import BudgetedOutcome, BudgetSpender, FitInputs
from app.ledger.producer import BillMode
from app.settings import Settings


class CampaignSpend:
    """Holds, fits, voids and posts an auction's campaign budgets (see the module docstring)."""

    def __init__(
        self,
        spender: BudgetSpender,
        campaigns: CampaignResolver,
        settings: Settings,
        observer: AuctionObserver,
    ) -> None:
        self.spender = spender
        self.campaigns = campaigns
        self.settings = settings
        self.observer = observer

    def hold(
        self, participants: Participants, mode: BillMode, auction_id: str
    ) -> asyncio.Future[list[int]] | None:
        """The campaigns' pre-authorisation holds (`BudgetSpender.hold`), started now so that their
        durable write runs beside the model work; None without campaigns, for a test auction, with
        BUDGET_HOLD_FACTOR=0, and in BILLING_MODE=render (a pending charge holds its amount until it is
        rendered: a hold larger than the payment would block the rest of the budget that long)."""
        if not participants.entries or mode != "bill" or self.settings.budget_hold_factor <= 0:
            return None
        return asyncio.ensure_future(self.spender.hold(participants, auction_id, clock_ms(), render=False))

    async def void(
        self,
        participants: Participants,
        mode: BillMode,
        auction_id: str,
        holding: asyncio.Future[list[int]] | None,
    ) -> None:
        """A failed auction's holds, reservations and cap slots go back (its holds land first, so that
        the void finds them)."""
        if participants.entries and mode != "none":
            if holding is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.shield(holding)
            await asyncio.shield(self.spender.void(participants, auction_id, clock_ms()))

    async def fit(
        self,
        participants: Participants,
        resolved: ResolvedAuction,
        seed: int,
        auction_id: str,
        clock: StageClock,
        mode: BillMode,
        overlap: Callable[[BudgetedOutcome], None],
        holding: asyncio.Future[list[int]] | None = None,
    ) -> BudgetedOutcome | None:
        """Every campaign's payment within its budget, reserved (`app.campaigns.spend`: within its
        hold, or reserved now); None without campaigns (the inline auction is untouched). `overlap`
        builds the answer while the reservations are in flight."""
        if not participants.entries:
            return None
        held = await asyncio.shield(holding) if holding is not None else None
        begin = time.perf_counter()
        scored = resolved.scored
        inputs = FitInputs(
            rewards=resolved.rewards,
            log_ref=scored.log_ref,
            log_proposal=scored.log_proposal,
            tau=resolved.outcome.tau,
            seed=derive_seed(seed, SEED_ALLOCATION),
            outcome=resolved.outcome,
        )
        budgeted = await self.spender.fit_and_reserve(
            participants,
            inputs,
            auction_id,
            clock_ms(),
            reserve=mode != "none",
            render=mode == "pending",
            overlap=overlap,
            held=held,
        )
        for record in budgeted.records:
            if record.budget_multiplier < 1.0:
                self.observer.campaign_counted("dropped" if record.budget_multiplier == 0.0 else "lowered")
        clock.stages_ms["mechanism"] += (time.perf_counter() - begin) * 1000
        return budgeted

    async def post_rendered(self, record: dict[str, Any]) -> None:
        """A pending charge was just rendered (billed): post its campaigns' reservations with their pacing
        steps and the payments they capture (the ledger consumer posts them too when it applies the
        event, without a step)."""
        budgets = record.get("budgets") or []
        campaign_ids = [str(entry["campaign_id"]) for entry in budgets]
        if campaign_ids:
            now = clock_ms()
            steps = await self.campaigns.pacing_steps(campaign_ids, now)
            paid = record.get("payments_micro") or {}
            captured = [paid.get(str(entry["advertiser_id"])) for entry in budgets]
            await self.spender.post_steps(campaign_ids, str(record["auction_id"]), steps, now, captured)
