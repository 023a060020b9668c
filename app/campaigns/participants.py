"""Which requested campaigns enter an auction, and as what: `CampaignResolver.resolve`.

Job: turn `POST /auction`'s `campaigns: [ids]` (or those a selection chose) into advertisers of the
auction, before any model work and before admission (their texts are part of its cost): read the
campaigns and their budgets (one round trip; or none: this process's recent read,
`app.campaigns.recent`, and `recheck` reads them again beside the model work before anything is
reserved), leave out those paused, archived, outside their schedule, of an owner in the request's
`badv`, in a category of its `bcat`, out of budget, or of an owner already in the auction (one
campaign per owner: two would form a coalition that reads a third party's rewards by subtraction),
reserve each capped campaign's frequency cap slot for the request's `user_id` (one round
trip; a cap reached: `frequency_capped`), and fix each one's pacing multiplier α = 1/(1+μ) from spend
before this auction. Nobody left and nobody inline: the participants carry the no-fill reason. The
auction then runs on the `Participants.request`, whose campaign advertisers bid α·s_i. Which enter
never depends on s_i beyond "has budget left" (docs/DESIGN.md § The ad-server layer: selection).
Imports the campaign store, eligibility and pacing, the budget and frequency ledgers and
`app.contract` (no web types).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from app.campaigns.eligibility import campaign_day, day_bounds_ms, schedule_exclusion
from app.campaigns.pacing import TrafficCurve, day_fraction, pacing_multiplier, pacing_step
from app.campaigns.recent import RecentRead
from app.campaigns.store import CampaignStore, campaign_key, parse_stored
from app.contract.campaign import Campaign
from app.contract.request import AdvertiserIn, AuctionRequest
from app.contract.result import CampaignExclusion
from app.contract.selection import ExclusionReason, NoFill, SelectionReport
from app.ledger.budget import BudgetLedger, BudgetLimits, BudgetState, PacingStep
from app.ledger.events import PacingArgs
from app.ledger.frequency import FrequencyHold, FrequencyLedger, reservation_expiry_ms, user_hash
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
    frequency: FrequencyHold | None = None  # its cap slot for this auction's user, reserved

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
    auction_id: str = ""  # given before the auction runs: its cap slots are reserved under it
    no_fill: NoFill | None = None  # nobody bids: the reply is organic (app.auction.no_fill)
    selection: SelectionReport | None = None  # a `select` request's: what the selection saw
    # entry decided from this process's recent read (app.campaigns.recent): `CampaignResolver.recheck`
    # reads the entries again before any hold or reservation
    recheck: bool = False

    @property
    def frequency_holds(self) -> list[FrequencyHold]:
        return [entry.frequency for entry in self.entries if entry.frequency is not None]

    def pacing_args(self) -> dict[str, PacingArgs | None]:
        """Each campaign's pacing step for its billing event: the ledger consumer's post, once the event
        is in the stream, spends the reservation and steps μ with it (nothing is written after the reply)."""
        return {
            entry.campaign.id: None
            if entry.pacing_step is None
            else (entry.pacing_step.target_micro, entry.pacing_step.epsilon, entry.pacing_step.mu_max)
            for entry in self.entries
        }

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
        self.frequency = FrequencyLedger(budgets.redis, settings)
        self.settings = settings
        self.traffic = TrafficCurve(tuple(settings.pacing_traffic))

    async def resolve(
        self,
        request: AuctionRequest,
        now_ms: int | None = None,
        *,
        auction_id: str = "",
        campaign_ids: Sequence[str] | None = None,
    ) -> Participants:
        """Who enters (see the module docstring). `campaign_ids`: those a `select` request's selection
        chose (default: the request's `campaigns`); `auction_id`: the auction's (made here when not
        given) under which cap slots are reserved."""
        auction_id = auction_id or uuid.uuid4().hex
        requested = list(request.campaigns if campaign_ids is None else campaign_ids)
        if not requested:
            return _participants(request, [], [], auction_id, selected_none=request.select is not None)
        now = int(time.time() * 1000) if now_ms is None else now_ms
        recent = self._recent(requested, now)
        found, states = recent if recent is not None else await self._read(requested, now)
        excluded: list[CampaignExclusion] = []
        candidates: list[tuple[Campaign, BudgetState]] = []
        inline_owners = {advertiser.id for advertiser in request.advertisers}
        for campaign_id, campaign in zip(requested, found, strict=True):
            reason = _exclusion(request, campaign, now, inline_owners)
            if reason is None and campaign is not None:
                state = states[campaign.id, campaign_day(campaign, now)]
                remaining = state.remaining(budget_limits(campaign))
                reason = "out_of_budget" if remaining is not None and remaining <= 0 else None
            if reason is not None or campaign is None:
                excluded.append(CampaignExclusion(campaign_id=campaign_id, reason=reason or "not_found"))
            else:
                candidates.append((campaign, state))
        holds, refused = await self._reserve_caps(request, [c for c, _ in candidates], auction_id, now)
        owners = set(inline_owners)
        entries: list[CampaignEntry] = []
        extra: list[FrequencyHold] = []
        for campaign, state in candidates:
            hold = holds.get(campaign.id)
            reason = "frequency_capped" if campaign.id in refused else None
            if reason is None and campaign.owner in owners:
                reason = "same_owner"
                extra += [hold] if hold is not None else []
            if reason is not None:
                excluded.append(CampaignExclusion(campaign_id=campaign.id, reason=reason))
                continue
            owners.add(campaign.owner)
            row = len(request.advertisers) + len(entries)
            entry = self._entry(campaign, row, budget_limits(campaign), state, state.day, now)
            entries.append(replace(entry, frequency=hold))
        if extra:  # a second campaign of one owner: its slot goes back at once
            await self.frequency.void_all([(h.campaign_id, h.user) for h in extra], auction_id, now)
        participants = _participants(request, entries, excluded, auction_id, selected_none=False)
        return replace(participants, recheck=recent is not None and bool(entries))

    def _recent(
        self, campaign_ids: list[str], now_ms: int
    ) -> tuple[list[Campaign | None], dict[tuple[str, str], BudgetState]] | None:
        """`_read`'s answer from this process's recent reads (≤ CAMPAIGN_CACHE_S old), or None when one
        campaign is missing, too old, or lacks its state for its day as of `now_ms`."""
        reads = self.store.recent.get_all(campaign_ids)
        if reads is None:
            return None
        states: dict[tuple[str, str], BudgetState] = {}
        for read in reads:
            day = campaign_day(read.campaign, now_ms)
            if day not in read.states:
                return None
            states[read.campaign.id, day] = read.states[day]
        return [read.campaign for read in reads], states

    async def _reserve_caps(
        self, request: AuctionRequest, campaigns: list[Campaign], auction_id: str, now_ms: int
    ) -> tuple[dict[str, FrequencyHold], set[str]]:
        """Each capped campaign's slot for the request's user, reserved (ONE round trip): the slots
        held, and the campaigns whose cap is reached. A test auction only counts (it is never billed);
        without `user_id` caps do not apply."""
        if request.user_id is None:
            return {}, set()
        user = user_hash(request.user_id)
        holds = [
            FrequencyHold(c.id, user, c.frequency_cap.max_auctions, c.frequency_cap.per_seconds)
            for c in campaigns
            if c.frequency_cap is not None
        ]
        if not holds:
            return {}, set()
        if request.test:
            counts = await self.frequency.count_all(holds, now_ms)
            return {}, {
                h.campaign_id for h, n in zip(holds, counts, strict=True) if n.reached(h.max_auctions)
            }
        render = self.settings.billing_mode == "render"
        expires_at_ms = reservation_expiry_ms(self.settings, now_ms, render)
        taken = await self.frequency.reserve_all(holds, auction_id, now_ms, expires_at_ms)
        held = {h.campaign_id: h for h, ok in zip(holds, taken, strict=True) if ok}
        return held, {h.campaign_id for h in holds if h.campaign_id not in held}

    async def _read(
        self, campaign_ids: list[str], now_ms: int
    ) -> tuple[list[Campaign | None], dict[tuple[str, str], BudgetState]]:
        """The campaigns and their budget states in ONE round trip: the day a budget counts on is the
        campaign's own (its time zone), unknown before it is read, so each campaign's state is read for
        every date some time zone has now (UTC−12 … UTC+14: at most three)."""
        sent = time.monotonic()  # what it reads is kept for the next auctions (app.campaigns.recent)
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
        for campaign in found:
            if campaign is not None:
                mine = {day: state for (cid, day), state in by_pair.items() if cid == campaign.id}
                self.store.recent.put(RecentRead(campaign, mine, sent))
        return found, by_pair

    async def recheck(self, participants: Participants, now_ms: int) -> tuple[Participants, list[int]]:
        """Entries decided from a recent read (`Participants.recheck`), read again before any hold or
        reservation (ONE round trip, run beside the model work): one found deleted, paused, archived
        or out of its schedule is withdrawn — listed in `excluded` with that reason, its
        row left out of the draw (α_b = 0: never charged, nothing reserved or posted), its cap slot
        voided; the others go on with the budget limits and state of this read (the charge's: a cached
        limit never reaches a reservation). Their text, value scale and α stay those the auction began
        with. The request's badv/bcat apply again; a frequency cap changed since is withdrawn as
        `frequency_capped` (the slot was reserved under the old one). Returns the participants and the
        withdrawn rows."""
        if not participants.recheck:
            return participants, []
        found, states = await self._read([e.campaign.id for e in participants.entries], now_ms)
        kept: list[CampaignEntry] = []
        withdrawn: list[CampaignEntry] = []
        excluded = list(participants.excluded)
        request = participants.request
        rows = {entry.row for entry in participants.entries}
        inline = {a.id for i, a in enumerate(request.advertisers) if i not in rows}
        for entry, fresh in zip(participants.entries, found, strict=True):
            reason = _exclusion(request, fresh, now_ms, inline)
            if reason is None and fresh is not None and fresh.frequency_cap != entry.campaign.frequency_cap:
                reason = "frequency_capped"  # its slot was taken under the old cap (or none): not now
            if reason is None and fresh is not None:
                # out of budget now: it stays in, the fit finds nothing left (α_b = 0, charged 0), as
                # when others spend it between any read and the reservation
                state = states.get((fresh.id, entry.day))
                if state is None:  # its day began since (read it as the auction's)
                    (state,) = await self.budgets.states([fresh.id], [entry.day], now_ms)
                kept.append(replace(entry, limits=budget_limits(fresh), state=state))
                continue
            excluded.append(CampaignExclusion(campaign_id=entry.campaign.id, reason=reason or "not_found"))
            withdrawn.append(entry)
        slots = [(e.frequency.campaign_id, e.frequency.user) for e in withdrawn if e.frequency is not None]
        if slots:
            await self.frequency.void_all(slots, participants.auction_id, now_ms)
        rechecked = replace(participants, entries=tuple(kept), excluded=tuple(excluded), recheck=False)
        return rechecked, [entry.row for entry in withdrawn]

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


def _exclusion(
    request: AuctionRequest, campaign: Campaign | None, now_ms: int, inline_owners: set[str]
) -> ExclusionReason | None:
    """Why a campaign read from the registry may not enter, before its budget and cap are looked at."""
    if campaign is None:
        return "not_found"
    reason = schedule_exclusion(campaign, now_ms)
    if reason is None and campaign.owner in request.badv:
        reason = "badv"
    if reason is None and not set(campaign.targeting.categories).isdisjoint(request.bcat):
        reason = "bcat"
    if reason is None and campaign.owner in inline_owners:
        reason = "same_owner"
    return reason


def nobody_bids(excluded: Sequence[CampaignExclusion], selected_none: bool) -> NoFill:
    """Why nobody bids when no inline advertiser and no campaign entered (docs/DESIGN.md § No-fill):
    all_capped / all_out_of_budget when every campaign left out had that reason, no_relevant_campaign
    when the selection found none, else all_excluded."""
    reasons = {exclusion.reason for exclusion in excluded}
    if reasons == {"frequency_capped"}:
        return NoFill(
            reason="all_capped", detail=f"all {len(excluded)} campaigns reached their frequency cap"
        )
    if reasons == {"out_of_budget"}:
        return NoFill(reason="all_out_of_budget", detail=f"all {len(excluded)} campaigns are out of budget")
    if selected_none:
        return NoFill(reason="no_relevant_campaign", detail="no campaign is relevant to the query")
    counts = ", ".join(f"{r}: {sum(x.reason == r for x in excluded)}" for r in sorted(reasons))
    return NoFill(reason="all_excluded", detail=f"every campaign was left out ({counts})")


def _participants(
    request: AuctionRequest,
    entries: list[CampaignEntry],
    excluded: list[CampaignExclusion],
    auction_id: str,
    selected_none: bool,
) -> Participants:
    bidding = _auction_request(request, entries)
    no_fill = None if bidding.advertisers else nobody_bids(excluded, selected_none)
    return Participants(bidding, tuple(entries), tuple(excluded), auction_id=auction_id, no_fill=no_fill)


def _auction_request(request: AuctionRequest, entries: list[CampaignEntry]) -> AuctionRequest:
    """The request the auction runs on: inline advertisers, then each campaign's, bidding α·s_i. With
    nobody left it is a no-fill: one organic reply from the reference model, nobody charged."""
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
