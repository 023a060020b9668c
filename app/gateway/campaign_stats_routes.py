"""`GET /campaigns/{id}/stats`: a campaign's spend, auctions and pacing, for its owner or the platform.

Job: the route over `app.campaigns.stats` (the domain reads Redis; this only checks who asks). Imports
FastAPI, the gateway's deps, security and openapi helpers, and `app.campaigns.stats` / `app.contract`.
See docs/DESIGN.md § Layout.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path

from app.campaigns.stats import read_campaign_stats
from app.contract.campaign_stats import CampaignStats
from app.contract.request import ADVERTISER_ID_PATTERN
from app.gateway.deps import AuctionServiceDep, SettingsDep
from app.gateway.openapi import error_responses
from app.gateway.security import Principal, require_api_key

router = APIRouter(tags=["campaigns"], dependencies=[Depends(require_api_key)])


@router.get(
    "/campaigns/{campaign_id}/stats",
    response_model=CampaignStats,
    summary="A campaign's spend today and in total, auctions entered, mean payment and pacing multiplier",
    responses=error_responses(401, 403, 404, 422, 503),
)
async def get_campaign_stats(
    service: AuctionServiceDep,
    settings: SettingsDep,
    campaign_id: Annotated[str, Path(pattern=ADVERTISER_ID_PATTERN)],
    principal: Principal = Depends(require_api_key),
) -> CampaignStats:
    found = await read_campaign_stats(service.campaign_store, service.budgets, campaign_id, settings.currency)
    if found is None:
        raise HTTPException(status_code=404, detail=f"no campaign {campaign_id!r}")
    if not principal.may_read_advertiser(found[0].owner):
        raise HTTPException(
            status_code=403, detail=f"this key is scoped to advertiser {principal.advertiser_id!r}"
        )
    return found[1]
