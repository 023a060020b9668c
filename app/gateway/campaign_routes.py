"""The ``/campaigns`` HTTP API: create, page, read, update (If-Match) and archive campaigns.

Who may do what: a platform key (or auth off) manages every campaign and must name its `owner` when
creating one; an advertiser key manages only the campaigns whose owner is its advertiser id (403 for
any other, creating included) and lists only those. A campaign's ETag is its version, ``"<version>"``:
PATCH must send it in `If-Match` (428 without, 412 when it is not the stored one: a lost update is
refused, never merged); archive takes it optionally. Imports FastAPI, the campaign registry
(`app.campaigns.store`), the contract's models and limits, the gateway's deps, OpenAPI helpers and
security; see docs/DESIGN.md § Layout.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Response
from fastapi.exceptions import RequestValidationError

from app.campaigns.store import (
    CURSOR_PATTERN,
    CampaignArchivedError,
    CampaignCursorError,
    CampaignExistsError,
    CampaignNotFoundError,
    CampaignVersionError,
)
from app.contract.campaign import Campaign, CampaignCreate, CampaignPage, CampaignPatch
from app.contract.limits import enforce_campaign_limits
from app.contract.request import ADVERTISER_ID_PATTERN
from app.gateway.deps import CampaignStoreDep, SettingsDep
from app.gateway.openapi import error_responses
from app.gateway.security import Principal, require_api_key
from app.gateway.strict_json import StrictJSONRoute

router = APIRouter(
    prefix="/campaigns",
    tags=["campaigns"],
    route_class=StrictJSONRoute,
    dependencies=[Depends(require_api_key)],
)

CampaignIdPath = Annotated[str, Path(pattern=ADVERTISER_ID_PATTERN, description="The campaign's id.")]
_ETAG = re.compile(r'\s*(W/)?"([^"]*)"\s*')
_ETAG_HEADER = {
    "ETag": {"description": 'The campaign\'s version, quoted: `"3"`', "schema": {"type": "string"}}
}
IfMatchHeader = Annotated[
    str | None,
    Header(
        alias="If-Match",
        max_length=1024,
        description='The ETag the change was made from (`"3"`); `*` matches any version.',
    ),
]


def _with_etag(description: str, *errors: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses: a 200 carrying the campaign's ETag, and these error statuses."""
    return {200: {"description": description, "headers": _ETAG_HEADER}, **error_responses(*errors)}


def _etag(campaign: Campaign) -> str:
    return f'"{campaign.version}"'


def _answer(response: Response, campaign: Campaign) -> Campaign:
    response.headers["ETag"] = _etag(campaign)
    return campaign


def _forbidden(principal: Principal, owner: str) -> HTTPException:
    return HTTPException(
        status_code=403,
        detail=f"this key is scoped to advertiser {principal.advertiser_id!r}: campaigns of owner "
        f"{owner!r} are not its own",
    )


def _matched_version(if_match: str, current: Campaign) -> int:
    """The version an If-Match names when it matches `current` (strong comparison, RFC 9110 §13.1.1:
    a weak tag never matches), else 412 naming the current ETag."""
    if if_match.strip() == "*":
        return current.version
    tags = [_ETAG.fullmatch(part) for part in if_match.split(",")]
    if any(tag is not None and tag.group(1) is None and tag.group(2) == str(current.version) for tag in tags):
        return current.version
    raise HTTPException(
        status_code=412,
        detail=f"If-Match {if_match[:100]!r} is not the current version of campaign {current.id!r}: "
        f"{_etag(current)} (read it again and re-apply the change)",
        headers={"ETag": _etag(current)},
    )


@contextmanager
def _store_errors() -> Iterator[None]:
    """The registry's refusals as HTTP answers (404, 409, 412)."""
    try:
        yield
    except CampaignNotFoundError as error:
        raise HTTPException(status_code=404, detail=str(error)) from None
    except (CampaignExistsError, CampaignArchivedError) as error:
        raise HTTPException(status_code=409, detail=str(error)) from None
    except CampaignVersionError as error:
        raise HTTPException(
            status_code=412, detail=str(error), headers={"ETag": f'"{error.current}"'}
        ) from None


async def _own_campaign(
    campaign_id: CampaignIdPath, store: CampaignStoreDep, principal: Principal = Depends(require_api_key)
) -> Campaign:
    """The campaign of the path, or 404; 403 when the key is another advertiser's."""
    campaign = await store.get(campaign_id)
    if campaign is None:
        raise HTTPException(status_code=404, detail=f"campaign {campaign_id!r} not found")
    if not principal.may_read_advertiser(campaign.owner):
        raise _forbidden(principal, campaign.owner)
    return campaign


# The campaign a route acts on, read and checked against the caller's key.
OwnCampaign = Annotated[Campaign, Depends(_own_campaign)]


def _owner_of_new(body: CampaignCreate, principal: Principal) -> str:
    if principal.scope == "advertiser" and principal.advertiser_id is not None:
        if body.owner is not None and body.owner != principal.advertiser_id:
            raise _forbidden(principal, body.owner)
        return principal.advertiser_id
    if body.owner is None:
        missing = {"type": "missing", "loc": ("body", "owner"), "msg": "a platform key must name the owner"}
        raise RequestValidationError([missing])
    return body.owner


@router.post(
    "",
    status_code=201,
    response_model=Campaign,
    summary="Register a campaign (an advertiser with a budget, a schedule and targeting)",
    responses={
        201: {
            "description": "Created; `Location` is its URL, `ETag` its version",
            "headers": {
                **_ETAG_HEADER,
                "Location": {"description": "/campaigns/{id}", "schema": {"type": "string"}},
            },
        },
        **error_responses(401, 403, 409, 413, 422, 503),
    },
)
async def create_campaign(
    body: CampaignCreate,
    response: Response,
    store: CampaignStoreDep,
    settings: SettingsDep,
    principal: Principal = Depends(require_api_key),
) -> Campaign:
    owner = _owner_of_new(body, principal)
    enforce_campaign_limits(body, settings)
    with _store_errors():
        campaign = await store.create(body, owner)
    response.headers["Location"] = f"/campaigns/{campaign.id}"
    return _answer(response, campaign)


@router.get(
    "",
    response_model=CampaignPage,
    summary="Campaigns in creation order, a page at a time (an advertiser key: its own only)",
    responses=error_responses(401, 403, 422, 503),
)
async def list_campaigns(
    store: CampaignStoreDep,
    limit: Annotated[int, Query(ge=1, le=100, description="Campaigns per page.")] = 20,
    cursor: Annotated[
        str | None, Query(pattern=CURSOR_PATTERN, description="`next_cursor` of the previous page (opaque).")
    ] = None,
    owner: Annotated[
        str | None, Query(pattern=ADVERTISER_ID_PATTERN, description="Only this owner's campaigns.")
    ] = None,
    principal: Principal = Depends(require_api_key),
) -> CampaignPage:
    if principal.scope == "advertiser" and principal.advertiser_id is not None:
        if owner is not None and owner != principal.advertiser_id:
            raise _forbidden(principal, owner)
        owner = principal.advertiser_id
    try:
        return await store.list(owner, cursor, limit)
    except CampaignCursorError as error:
        bad = {"type": "value_error", "loc": ("query", "cursor"), "msg": str(error), "input": cursor}
        raise RequestValidationError([bad]) from None


@router.get(
    "/{campaign_id}",
    response_model=Campaign,
    summary="One campaign (its `ETag` is the version a PATCH names in `If-Match`)",
    responses=_with_etag("The campaign", 401, 403, 404, 422, 503),
)
async def get_campaign(campaign: OwnCampaign, response: Response) -> Campaign:
    return _answer(response, campaign)


@router.patch(
    "/{campaign_id}",
    response_model=Campaign,
    summary="Change a campaign: the fields given replace the stored ones (needs If-Match)",
    description='`If-Match: "<version>"` (the ETag of the campaign read) is required: 428 without it, '
    "412 when the campaign changed since (a lost update refused). `status: archived` is final: any "
    "change to an archived campaign is 409.",
    responses=_with_etag("The changed campaign, its new ETag", 401, 403, 404, 409, 412, 413, 422, 428, 503),
)
async def update_campaign(
    current: OwnCampaign,
    body: CampaignPatch,
    response: Response,
    store: CampaignStoreDep,
    settings: SettingsDep,
    if_match: IfMatchHeader = None,
) -> Campaign:
    if if_match is None:
        raise HTTPException(
            status_code=428,
            detail=f'If-Match is required: send the ETag of the campaign read ("{current.version}" now)',
        )
    enforce_campaign_limits(body, settings)
    version = _matched_version(if_match, current)
    with _store_errors():
        return _answer(response, await store.update(current.id, body, version))


@router.post(
    "/{campaign_id}/archive",
    response_model=Campaign,
    summary="Archive a campaign: it never bids again (final; If-Match optional)",
    responses=_with_etag("The archived campaign, its new ETag", 401, 403, 404, 412, 422, 503),
)
async def archive_campaign(
    current: OwnCampaign, response: Response, store: CampaignStoreDep, if_match: IfMatchHeader = None
) -> Campaign:
    version = None if if_match is None else _matched_version(if_match, current)
    with _store_errors():
        return _answer(response, await store.archive(current.id, version))
