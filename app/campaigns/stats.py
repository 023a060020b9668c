"""A campaign's report: spend today and in total, auctions, mean payment, pacing (`campaign_stats`).

Job: read one campaign and its budget hash (two reads) into `app.contract.campaign_stats.CampaignStats`.
Imports the campaign store and eligibility, the budget ledger, pacing and `app.contract`. See
docs/DESIGN.md § The ad-server layer.
"""

from __future__ import annotations

import time

from app.campaigns.eligibility import campaign_day
from app.campaigns.pacing import pacing_multiplier
from app.campaigns.participants import budget_limits
from app.campaigns.store import CampaignStore
from app.contract.campaign import Campaign
from app.contract.campaign_stats import CampaignStats
from app.ledger.budget import BudgetLedger


def _left(limit: int | None, used: int) -> int | None:
    return None if limit is None else max(0, limit - used)


async def campaign_stats(
    campaign: Campaign, budgets: BudgetLedger, currency: str, now_ms: int | None = None
) -> CampaignStats:
    now = int(time.time() * 1000) if now_ms is None else now_ms
    day = campaign_day(campaign, now)
    (state,) = await budgets.states([campaign.id], [day], now)
    limits = budget_limits(campaign)
    entered = state.auctions_total
    return CampaignStats(
        campaign_id=campaign.id,
        currency=currency,
        day=day,
        spent_today_micro=state.spent_today,
        spent_total_micro=state.spent_total,
        reserved_micro=state.reserved_total,
        remaining_today_micro=_left(limits.daily_micro, state.spent_today + state.reserved_today),
        remaining_total_micro=_left(limits.total_micro, state.spent_total + state.reserved_total),
        auctions_entered_today=state.auctions_today,
        auctions_entered=entered,
        auctions_charged=state.charged_total,
        mean_payment_micro=state.spent_total / entered if entered else 0.0,
        pacing_multiplier=pacing_multiplier(state.mu),
    )


async def read_campaign_stats(
    store: CampaignStore, budgets: BudgetLedger, campaign_id: str, currency: str
) -> tuple[Campaign, CampaignStats] | None:
    campaign = await store.get(campaign_id)
    if campaign is None:
        return None
    return campaign, await campaign_stats(campaign, budgets, currency)
