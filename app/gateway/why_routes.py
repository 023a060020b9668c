"""`GET /auctions/{id}/why`: why a reply is sponsored and by whom (DSA art. 26(1)(d), main parameters).

Job: the route over `app.auction.why.explain` (pure). The same keys and status codes as `GET
/auctions/{id}` (`app.gateway.routes.readable_record`: 404 unknown, expired or not the caller's):
a platform key and auth off get every sponsor's figures, an advertiser key her own entry and figures
with the other sponsors counted, never named. Imports FastAPI, the gateway's routes, deps, security and
openapi helpers, `app.auction.why` and `app.contract`. See docs/DESIGN.md § Disclosure.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.auction.why import explain
from app.contract.why import AuctionWhy
from app.gateway.deps import RecordsDep, SettingsDep
from app.gateway.openapi import error_responses
from app.gateway.routes import readable_record
from app.gateway.security import Principal, require_api_key
from app.gateway.strict_json import StrictJSONRoute

router = APIRouter(route_class=StrictJSONRoute)


@router.get(
    "/auctions/{auction_id}/why",
    response_model=AuctionWhy,
    tags=["auction"],
    summary="Why the reply is sponsored: each sponsor's reason, τ, M, the proposal (DSA art. 26)",
    description="Per sponsor (every advertiser charged ≥ 1 micro-unit, as the answer's `disclosure` lists "
    "them): why she took part (`selected` by the service's selection for the query, with its relevance "
    "and keyword match; or listed by the caller as a `campaign` or an `inline` advertiser), and of the "
    "auction τ, M and the proposal. Her figures (value scale, pacing and budget multipliers, expected "
    "reward, reward share) go to a platform key (or auth off) and to her own advertiser key only; an "
    "advertiser key gets `view: sealed`: her own entry, the other sponsors counted in `other_sponsors`, "
    "never named. Same keys and statuses as `GET /auctions/{auction_id}`.",
    responses=error_responses(401, 404, 422, 503),
)
async def explain_auction(
    auction_id: str,
    records: RecordsDep,
    settings: SettingsDep,
    principal: Principal = Depends(require_api_key),
) -> AuctionWhy:
    record = await readable_record(auction_id, records, settings, principal)
    return explain(record, principal.sealed_to)
