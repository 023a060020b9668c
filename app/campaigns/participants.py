"""Which requested campaigns enter an auction, and as what: `CampaignResolver.resolve`.

Job: turn `POST /auction`'s `campaigns: [ids]` into advertisers of the auction, before any model work
and before admission (their texts are part of its cost): read the campaigns (one round trip), leave out
those paused, archived, outside their schedule, out of budget (their budget hash: one round trip) or of
an owner already in the auction (one campaign per owner: two would form a coalition that reads a third
party's rewards by subtraction), and fix each one's pacing multiplier α = 1/(1+μ) from spend before
this auction. The auction then runs on the `Participants.request`, whose campaign advertisers bid α·s_i.
Which campaigns enter never depends on s_i beyond "has budget left" (docs/DESIGN.md § The ad-server
layer: selection). Imports the campaign store, eligibility and pacing, the budget ledger and
`app.contract` (no web types).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from app.campaigns.eligibility import campaign_day, day_bounds_ms, schedule_exclusion
from app.campaigns.pacing import TrafficCurve, day_fraction, pacing_multiplier, pacing_step
from app.campaigns.store import CampaignStore, campaign_key, parse_stored
from app.contract.campaign import Campaign
from app.contract.request import AdvertiserIn, AuctionRequest
from app.contract.result import CampaignExclusion
from app.ledger.budget import BudgetLedger, BudgetLimits, BudgetState, PacingStep
from app.settings import Settings


@dataclass(frozen=True)
class CampaignEntry:
    """One campaign in the auction: its row among the advertisers, its budget as read, its pacing."""

    campaign: Campaign
    row: int
    limits: BudgetLimits
    state: BudgetState
    day: str
    pacing_alpha: float
    pacing_step: PacingStep | None

    @property
    def remaining(self) -> int | None:
        return self.state.remaining(self.limits)


@dataclass(frozen=True)
class Participants:
    """The auction as it runs: the request with the campaigns' advertisers appended (bidding α·s_i),
    the campaigns that entered and those left out with the reason."""

    request: AuctionRequest
    entries: tuple[CampaignEntry, ...] = ()
    excluded: tuple[CampaignExclusion, ...] = ()

    def campaign_of(self, row: int) -> CampaignEntry | None:
        return next((entry for entry in self.entries if entry.row == row), None)


def _utc_date(moment_ms: int) -> str:
    return datetime.fromtimestamp(moment_ms / 1000, tz=UTC).date().isoformat()


def budget_limits(campaign: Campaign) -> BudgetLimits:
    return BudgetLimits(daily_micro=campaign.budget.daily_micro, total_micro=campaign.budget.total_micro)


class CampaignResolver:
    """Reads the requested campaigns and their budgets; decides who enters (see the module docstring)."""

    def __init__(self, store: CampaignStore, budgets: BudgetLedger, settings: Settings) -> None:
        self.store = store
        self.budgets = budgets
        self.settings = settings
        self.traffic = TrafficCurve(tuple(settings.pacing_traffic))

    async def resolve(self, request: AuctionRequest, now_ms: int | None = None) -> Participants:
        if not request.campaigns:
            return Participants(request=request)
        now = int(time.time() * 1000) if now_ms is None else now_ms
        found, states = await self._read(list(request.campaigns), now)
        excluded: list[CampaignExclusion] = []
        scheduled: list[tuple[Campaign, BudgetState]] = []
        for campaign_id, campaign in zip(request.campaigns, found, strict=True):
            reason = "not_found" if campaign is None else schedule_exclusion(campaign, now)
            if reason is not None or campaign is None:
                excluded.append(CampaignExclusion(campaign_id=campaign_id, reason=reason or "not_found"))
            else:
                scheduled.append((campaign, states[campaign_id, campaign_day(campaign, now)]))
        owners = {advertiser.id for advertiser in request.advertisers}
        entries: list[CampaignEntry] = []
        for campaign, state in scheduled:
            day, limits = state.day, budget_limits(campaign)
            remaining = state.remaining(limits)
            reason = "out_of_budget" if remaining is not None and remaining <= 0 else None
            if reason is None and campaign.owner in owners:
                reason = "same_owner"
            if reason is not None:
                excluded.append(CampaignExclusion(campaign_id=campaign.id, reason=reason))
                continue
            owners.add(campaign.owner)
            row = len(request.advertisers) + len(entries)
            entries.append(self._entry(campaign, row, limits, state, day, now))
        return Participants(
            request=_auction_request(request, entries), entries=tuple(entries), excluded=tuple(excluded)
        )

    async def _read(
        self, campaign_ids: list[str], now_ms: int
    ) -> tuple[list[Campaign | None], dict[tuple[str, str], BudgetState]]:
        """The campaigns and their budget states in ONE round trip: the day a budget counts on is the
        campaign's own (its time zone), unknown before it is read, so each campaign's state is read for
        every date some time zone has now (UTC−12 … UTC+14: at most three)."""
        days = sorted({_utc_date(now_ms + offset_h * 3_600_000) for offset_h in (-12, 0, 14)})
        pairs = [(campaign_id, day) for campaign_id in campaign_ids for day in days]
        docs, states = await self.budgets.states_beside(
            [campaign_key(c) for c in campaign_ids], [c for c, _ in pairs], [d for _, d in pairs], now_ms
        )
        found = [parse_stored(doc) for doc in docs]
        by_pair = dict(zip(pairs, states, strict=True))
        for campaign in found:  # a zone beyond those offsets (none in the IANA database today)
            if campaign is not None and (campaign.id, campaign_day(campaign, now_ms)) not in by_pair:
                day = campaign_day(campaign, now_ms)
                (by_pair[campaign.id, day],) = await self.budgets.states([campaign.id], [day], now_ms)
        return found, by_pair

    async def pacing_steps(self, campaign_ids: list[str], now_ms: int) -> list[PacingStep | None]:
        """Each campaign's pacing step as of now (a pending render charge is posted when rendered, long
        after its auction: its step is taken then, from the spend before the render)."""
        found = await self.store.get_many(campaign_ids)
        present = [campaign for campaign in found if campaign is not None]
        days = [campaign_day(campaign, now_ms) for campaign in present]
        states = iter(await self.budgets.states([c.id for c in present], days, now_ms) if present else [])
        steps: list[PacingStep | None] = []
        for campaign in found:
            if campaign is None:
                steps.append(None)
                continue
            entry = self._entry(campaign, 0, budget_limits(campaign), next(states), "", now_ms)
            steps.append(entry.pacing_step)
        return steps

    def _entry(
        self, campaign: Campaign, row: int, limits: BudgetLimits, state: BudgetState, day: str, now_ms: int
    ) -> CampaignEntry:
        """α from μ as it stands (spend before this auction), and the step that updates μ once billed
        (campaigns with a daily budget; the day's fraction is of the campaign's own day, 23 or 25 hours on a
        DST change)."""
        if not self.settings.pacing:
            return CampaignEntry(campaign, row, limits, state, day, pacing_alpha=1.0, pacing_step=None)
        start_ms, end_ms = day_bounds_ms(campaign, now_ms)
        step = pacing_step(
            state,
            limits,
            day_fraction(now_ms, start_ms, end_ms),
            self.traffic,
            epsilon=self.settings.pacing_epsilon,
            mu_max=self.settings.pacing_mu_max,
        )
        alpha = pacing_multiplier(state.mu)
        return CampaignEntry(
            campaign=campaign,
            row=row,
            limits=limits,
            state=state,
            day=day,
            pacing_alpha=alpha,
            pacing_step=step,
        )


def _auction_request(request: AuctionRequest, entries: list[CampaignEntry]) -> AuctionRequest:
    """The request the auction runs on: inline advertisers, then each campaign's, bidding α·s_i. With
    nobody left it is an organic reply: candidates from the reference model, nobody charged."""
    bidders: list[AdvertiserIn] = [
        entry.campaign.advertiser().model_copy(
            update={"value_scale": entry.campaign.value_scale * entry.pacing_alpha}
        )
        for entry in entries
    ]
    advertisers = [*request.advertisers, *bidders]
    update: dict[str, object] = {"advertisers": advertisers}
    if not advertisers:
        update["proposal"] = "reference"
    return request.model_copy(update=update)
