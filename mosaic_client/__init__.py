"""`mosaic_client`: typed sync and async clients of the MOSAIC auction API (httpx + the API's models).

    from mosaic_client import MosaicClient
    result = MosaicClient("http://127.0.0.1:8000").auction("Guitars?", ["strum:StrumMaster:guitars"])
    print(result.reply, [(row.id, row.payment) for row in result.advertisers])

With an advertiser key, `get_auction` and `resolve` return her sealed view (`SealedAuctionRecord`,
`SealedWhatIfResponse`); `resolve_own(view)` recomputes her payment from it with `app.mechanism`.
Every answer and record carries its `disclosure` (`Disclosure`; `SealedDisclosure` in a sealed view):
render `result.disclosure.label` beside the reply when it is not None; `why(auction_id)` is the
`AuctionWhy` of `GET /auctions/{id}/why` (each sponsor's reason, τ, M, the proposal).
`verify(auction_id)` checks the stored record (or her sealed view) against its signed statement with
the gateway's keys and recomputes the allocation and payments (`VerificationReport`, one `Check` each).
Exceptions: `mosaic_client.errors` (one per status, all `MosaicError`).
See docs/DESIGN.md § Layout.
"""

from app.contract.disclosure import Disclosure, DisclosureMetadata, SealedDisclosure, Sponsor
from app.contract.request import AdvertiserIn, AuctionRequest
from app.contract.result import AdvertiserResult, AuctionRecord, AuctionResponse, CandidateRecord
from app.contract.sealed import (
    SealedAuctionRecord,
    SealedCandidate,
    SealedRequest,
    SealedWhatIfResponse,
    resolve_own,
)
from app.contract.whatif import WhatIfRequest, WhatIfResponse
from app.contract.why import AuctionWhy, SelectionWhy, SponsorFigures, SponsorWhy
from app.verification.report import Check, VerificationReport
from mosaic_client.client import AsyncMosaicClient, MosaicClient, auction_request, parse_advertiser
from mosaic_client.errors import (
    AuthenticationError,
    ConflictError,
    DeadlineError,
    InvalidRequestError,
    MosaicError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitedError,
    ServerError,
    TransportError,
    UnavailableError,
    WorkerError,
)

__all__ = [
    "AdvertiserIn",
    "AdvertiserResult",
    "AsyncMosaicClient",
    "AuctionRecord",
    "AuctionRequest",
    "AuctionResponse",
    "AuctionWhy",
    "AuthenticationError",
    "CandidateRecord",
    "Check",
    "ConflictError",
    "DeadlineError",
    "Disclosure",
    "DisclosureMetadata",
    "InvalidRequestError",
    "MosaicClient",
    "MosaicError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitedError",
    "SealedAuctionRecord",
    "SealedCandidate",
    "SealedDisclosure",
    "SealedRequest",
    "SealedWhatIfResponse",
    "SelectionWhy",
    "ServerError",
    "Sponsor",
    "SponsorFigures",
    "SponsorWhy",
    "TransportError",
    "UnavailableError",
    "VerificationReport",
    "WhatIfRequest",
    "WhatIfResponse",
    "WorkerError",
    "auction_request",
    "parse_advertiser",
    "resolve_own",
]
