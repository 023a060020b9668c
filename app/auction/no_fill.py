"""A no-fill as the API states it: nobody bids, the reply is one organic sample, nothing is billed.

Job: the answer and the audit record of an auction nobody bid in (no inline advertiser, every campaign
left out or none selected, or ads turned off by `regs` / a sensitive topic): `no_fill_result` builds
them from the one reply `CandidateSampler.organic` drew from the reference model π_ref with the
auction's seed — no scoring, no mechanism, no billing event, `billing: "none"`, the reason in
`no_fill`. `ads_off` is the request-level check (regs and consent) that comes before any campaign is
read. No I/O. Imports the engine client's candidate type, the campaigns' participants and
`app.contract`; see docs/DESIGN.md § No-fill.
"""

from __future__ import annotations

import dataclasses

from app.auction.engine_client import GeneratedCandidate
from app.campaigns.participants import Participants
from app.contract.disclosure import disclose
from app.contract.request import AuctionRequest
from app.contract.result import AuctionRecord, AuctionResponse, AuctionTimings
from app.contract.selection import NoFill


def ads_off(request: AuctionRequest) -> Participants | None:
    """The participants of a request whose `regs` turn ads off (coppa, minor, no consent): nobody bids,
    inline advertisers included; None when ads are allowed."""
    why = request.regs.no_ads()
    if why is None:
        return None
    organic = request.model_copy(update={"advertisers": [], "proposal": "reference"})
    return Participants(request=organic, no_fill=NoFill(reason="no_consent", detail=why))


def organic(participants: Participants) -> Participants:
    """A no-fill's participants run on one candidate from the reference model (its admission cost too);
    others as they are."""
    if participants.no_fill is None:
        return participants
    request = participants.request.model_copy(update={"candidates": 1, "proposal": "reference"})
    return dataclasses.replace(participants, request=request)


def no_fill_result(
    participants: Participants,
    reply: GeneratedCandidate,
    *,
    auction_id: str,
    seed: int,
    currency: str,
    timings: AuctionTimings,
    created_at_ms: int,
) -> tuple[AuctionResponse, AuctionRecord]:
    """The answer (reply, why nobody bid, what was left out) and the record (the request as it ran)."""
    request = participants.request
    assert participants.no_fill is not None
    response = AuctionResponse(
        auction_id=auction_id,
        reply=reply.text,
        disclosure=disclose((), {}, auction_id=auction_id, test=request.test, no_fill=True),
        chosen_index=0,
        tau=request.tau if request.tau is not None else 1.0,
        proposal="reference",
        seed=seed,
        currency=currency,
        advertisers=[],
        revenue=0.0,
        effective_sample_size=1.0,
        timings_ms=timings,
        billing="none",
        test=True if request.test else None,
        excluded=list(participants.excluded) or None,
        selection=participants.selection,
        no_fill=participants.no_fill,
    )
    record = AuctionRecord(
        **response.model_dump(),
        request=request.model_dump(mode="json"),
        created_at_ms=created_at_ms,
        payments_micro={},
    )
    return response, record
