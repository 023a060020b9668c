"""The auction's campaign-budget steps, in the order `AuctionService.run` takes them.

Job: `hold` (beside the model work: the campaigns whose entry was decided from this process's recent
read are read again — `CampaignResolver.recheck` — then the pre-authorisation holds), `fit` (after the
mechanism: every campaign's payment within its budget — within its hold, or reserved then), `void` (a failed
auction's holds, reservations and cap slots go back) and `post_rendered` (a rendered charge's post with
its pacing steps and captured payments). Imports the campaigns' spender and resolver, the sampler's
seed names and the auction's result types; see docs/DESIGN.md § Cost on the reply path.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from app.auction.engine_client import derive_seed
from app.auction.observers import AuctionObserver
from app.auction.result import ResolvedAuction
from app.auction.run_control import clock_ms
from app.auction.sampler import SEED_ALLOCATION, StageClock
from app.campaigns.participants import CampaignResolver, Participants
from app.campaigns.spend import BudgetedOutcome, BudgetReservationError, BudgetSpender, FitInputs
from app.ledger.producer import BillMode
from app.settings import Settings


@dataclass(frozen=True)
class Beside:
    """What ran beside the model work: the participants rechecked, the rows withdrawn, the holds."""

    participants: Participants
    withdrawn: tuple[int, ...]
    held: list[int] | None  # each row's hold (None: no holds taken)


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
    ) -> asyncio.Future[Beside] | None:
        """Started now, to run beside the model work: the recheck of entries decided from a recent read
        (`CampaignResolver.recheck`: before any hold or reservation), then the campaigns'
        pre-authorisation holds (`BudgetSpender.hold`), whose durable write so runs beside the model
        work. No holds for a test auction, with BUDGET_HOLD_FACTOR=0, and in BILLING_MODE=render (a
        pending charge holds its amount until it is rendered: a hold larger than the payment would block
        the rest of the budget that long). None without campaigns, or with neither to do."""
        holds = mode == "bill" and self.settings.budget_hold_factor > 0
        if not participants.entries or not (holds or participants.recheck):
            return None
        return asyncio.ensure_future(self._beside(participants, auction_id, holds))

    async def _beside(self, participants: Participants, auction_id: str, holds: bool) -> Beside:
        now = clock_ms()
        try:
            rechecked, withdrawn = await self.campaigns.recheck(participants, now)
        except (RedisError, OSError) as error:  # nothing may be charged unchecked: the auction fails
            raise BudgetReservationError(f"campaigns could not be read again: {error}") from error
        for exclusion in rechecked.excluded[len(participants.excluded) :]:
            self.observer.campaign_counted(exclusion.reason)
        held = await self.spender.hold(rechecked, auction_id, now, render=False) if holds else None
        return Beside(rechecked, tuple(withdrawn), held)

    async def void(
        self,
        participants: Participants,
        mode: BillMode,
        auction_id: str,
        holding: asyncio.Future[Beside] | None,
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
        holding: asyncio.Future[Beside] | None = None,
    ) -> BudgetedOutcome | None:
        """Every campaign's payment within its budget, reserved (`app.campaigns.spend`: within its
        hold, or reserved now); None without campaigns (the inline auction is untouched). `overlap`
        builds the answer while the reservations are in flight; the outcome's `participants` are the
        rechecked ones (withdrawn campaigns in `excluded`, their rows charged 0)."""
        if not participants.entries:
            return None
        beside = await asyncio.shield(holding) if holding is not None else None
        if beside is not None:
            participants = beside.participants
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
            held=beside.held if beside is not None else None,
            withdrawn=beside.withdrawn if beside is not None else (),
        )
        for record in budgeted.records:
            if record.remaining_micro is not None and record.reserved_micro >= record.remaining_micro > 0:
                # this auction takes what remained: the next one here must read it (out_of_budget before
                # any model work), not enter from the recent read taken before this reservation
                self.campaigns.store.recent.drop(record.campaign_id)
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
