"""Read-only HTTP API of the billing ledger: an advertiser's balance and history, and a summary.

Job: the ``/ledger`` FastAPI router over `app.ledger.reader.LedgerReader`, behind the gateway's API-key
check (the ledger itself knows nothing of HTTP). Imports FastAPI, app.gateway.security
(`require_api_key`), app.gateway.deps (`LedgerDep`: a reader over the gateway's Redis and settings),
app.gateway.openapi (`error_responses`) and app.ledger.events only; see docs/DESIGN.md § Layout.
Amounts are integer micro-units (``*_micro``) plus the same value as
an exact decimal string; ``balance`` is the advertiser's ledger account (minus what it paid).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query

from app.gateway.deps import LedgerDep
from app.gateway.openapi import error_responses
from app.gateway.security import Principal, require_api_key, require_platform_key
from app.ledger.events import MAX_ID_LENGTH

router = APIRouter(prefix="/ledger", tags=["ledger"], dependencies=[Depends(require_api_key)])


@router.get(
    "/advertisers/{advertiser_id}",
    summary="An advertiser's balance, auctions billed and latest ledger entries (newest first)",
    responses=error_responses(401, 403, 422, 503),
)
async def get_advertiser(
    reader: LedgerDep,
    advertiser_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH)],
    limit: Annotated[int, Query(ge=1, le=1000, description="History entries to return.")] = 50,
    principal: Principal = Depends(require_api_key),
) -> dict[str, Any]:
    if not principal.may_read_advertiser(advertiser_id):
        raise HTTPException(
            status_code=403, detail=f"this key is scoped to advertiser {principal.advertiser_id!r}"
        )
    return await reader.advertiser(advertiser_id, limit=limit)


@router.get(
    "/summary",
    summary="Platform revenue, events applied, stream length, pending, lag and dead letters",
    responses=error_responses(401, 403, 503),
    dependencies=[Depends(require_platform_key)],
)
async def get_summary(reader: LedgerDep) -> dict[str, Any]:
    return await reader.summary()
