"""The pure rules of issue 34's request side: which flag turns ads off, the no-fill reason's precedence,
the request's new fields and their limits (no I/O)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from app.auction.no_fill import ads_off, organic
from app.campaigns.participants import nobody_bids
from app.contract.limits import LimitExceededError, enforce_limits
from app.contract.request import AuctionRequest, RegsIn
from app.contract.result import CampaignExclusion
from app.settings import Settings

INLINE = {"id": "a", "name": "A", "description": "guitars"}


def excluded(*reasons: Any) -> list[CampaignExclusion]:
    return [CampaignExclusion(campaign_id=f"c{i}", reason=reason) for i, reason in enumerate(reasons)]


def test_no_fill_reason_precedence() -> None:
    """Invariant: all_capped / all_out_of_budget only when EVERY left-out campaign had that reason;
    no_relevant_campaign when a selection found none; otherwise all_excluded, listing the reasons."""
    assert nobody_bids(excluded("frequency_capped", "frequency_capped"), False).reason == "all_capped"
    assert nobody_bids(excluded("out_of_budget"), True).reason == "all_out_of_budget"
    assert nobody_bids([], True).reason == "no_relevant_campaign"
    mixed = nobody_bids(excluded("frequency_capped", "out_of_budget", "paused"), False)
    assert mixed.reason == "all_excluded" and "paused: 1" in mixed.detail
    # a selection that found none: its own exclusions (not relevant, negative keyword) do not change that
    assert nobody_bids(excluded("not_relevant", "negative_keyword"), True).reason == "no_relevant_campaign"


@pytest.mark.parametrize(
    ("regs", "words"),
    [
        ({"coppa": True, "minor": True}, "coppa"),
        ({"minor": True}, "minor"),
        ({"ads_consent": False}, "consent"),
    ],
)
def test_regs_turn_ads_off_for_everyone(regs: dict[str, bool], words: str) -> None:
    """Invariant: coppa, minor or no consent → nobody bids (inline advertisers too), reason no_consent
    naming the flag; the organic draw is one candidate from the reference model."""
    request = AuctionRequest.model_validate({"query": "q", "advertisers": [INLINE], "regs": regs})
    participants = ads_off(request)
    assert participants is not None and participants.no_fill is not None
    assert participants.no_fill.reason == "no_consent" and words in participants.no_fill.detail
    assert participants.request.advertisers == [] and participants.entries == ()
    drawn = organic(participants).request
    assert (drawn.candidates, drawn.proposal) == (1, "reference")
    assert ads_off(AuctionRequest.model_validate({"query": "q", "advertisers": [INLINE]})) is None
    assert RegsIn().no_ads() is None


def test_select_names_campaigns_one_way_and_counts_against_max_advertisers() -> None:
    """Invariant: `select` alone is someone bidding; with `campaigns` it is refused at `select`; its
    `max` plus the inline advertisers stays within MAX_ADVERTISERS (a 422 naming select.max)."""
    AuctionRequest.model_validate({"query": "q", "select": {"max": 3}})
    with pytest.raises(ValidationError) as refused:
        AuctionRequest.model_validate({"query": "q", "select": {"max": 3}, "campaigns": ["c"]})
    assert refused.value.errors()[0]["loc"] == ("select",)
    AuctionRequest.model_validate({"query": "q", "select": {"max": 3}, "campaigns": []})
    settings = Settings(max_advertisers=4)
    enforce_limits(
        AuctionRequest.model_validate({"query": "q", "select": {"max": 3}, "advertisers": [INLINE]}), settings
    )
    with pytest.raises(LimitExceededError) as over:
        request = {"query": "q", "select": {"max": 4}, "advertisers": [INLINE]}
        enforce_limits(AuctionRequest.model_validate(request), settings)
    assert over.value.errors[0]["loc"] == ("body", "select", "max")


def test_the_schema_states_the_new_rules() -> None:
    """Invariant: the document says what the server enforces: someone bids through advertisers,
    campaigns or select; not campaigns and select together; bcat/badv unique and bounded."""
    schema = AuctionRequest.model_json_schema()
    bidders = schema["allOf"][1]["anyOf"]
    assert {"properties": {"select": {"type": "object"}}, "required": ["select"]} in bidders
    assert schema["allOf"][2]["not"]["required"] == ["campaigns", "select"]
    for name, most in (("bcat", 50), ("badv", 100)):
        assert (
            schema["properties"][name]["uniqueItems"] is True
            and schema["properties"][name]["maxItems"] == most
        )
