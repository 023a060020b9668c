"""What `GET /campaigns/{id}/stats` answers: a campaign's spend, auctions and pacing (`CampaignStats`).

Imports pydantic only; built by `app.campaigns.stats`. See docs/DESIGN.md § The ad-server layer.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class CampaignStats(BaseModel):
    campaign_id: str
    currency: str
    day: str = Field(description="The campaign's current day (YYYY-MM-DD in its time zone).")
    spent_today_micro: int = Field(description="Posted (billed) spend today, micro-units.")
    spent_total_micro: int
    reserved_micro: int = Field(
        description="Held by auctions served but not yet billed (a pending render charge holds its amount)."
    )
    remaining_today_micro: int | None = Field(
        description="What today's budget leaves (None: no daily limit)."
    )
    remaining_total_micro: int | None = Field(
        description="What the total budget leaves (None: no total limit)."
    )
    auctions_entered_today: int = Field(
        description="Auctions of today whose outcome was billed (0 included)."
    )
    auctions_entered: int = Field(description="Auctions whose outcome was billed, a payment of 0 included.")
    auctions_charged: int = Field(description="Of those, the ones that charged at least one micro-unit.")
    mean_payment_micro: float = Field(description="spent_total_micro / auctions_entered (0 when none).")
    pacing_multiplier: float = Field(description="α = 1/(1+μ): the next auction bids α·value_scale.")
