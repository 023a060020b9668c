"""What `POST /auction` answers (`AuctionResponse`) and `GET /auctions/{id}` returns (`AuctionRecord`).

Built from an auction's outcome by `app.auction.result`. Imports pydantic and the contract's request,
selection and disclosure models only; see docs/DESIGN.md § Layout.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.contract.attestation import RecordAttestation
from app.contract.disclosure import Disclosure
from app.contract.engine import EngineRecord
from app.contract.request import ProposalName
from app.contract.selection import EXCLUSION_DESCRIPTION, ExclusionReason, NoFill, SelectionReport

BillingState = Literal["billed", "pending", "expired", "test", "none"]


class CampaignExclusion(BaseModel):
    campaign_id: str
    reason: ExclusionReason = Field(description=EXCLUSION_DESCRIPTION)


def _absent(value: object) -> bool:
    # An inline advertiser's row has no campaign fields: left out of the JSON, not written as nulls, so
    # records and answers of auctions without campaigns are as before.
    return value is None


class AdvertiserResult(BaseModel):
    id: str
    payment: float = Field(description="p_i = R_i − U_i, charged (expected, not realised).")
    expected_reward: float = Field(description="R_i = Σ_j π_j r_i(y_j).")
    expected_utility: float = Field(description="U_i = τ LSE(ℓ) − τ LSE(β_{-i}).")
    campaign_id: str | None = Field(
        None, exclude_if=_absent, description="The campaign she entered with (absent when inline)."
    )
    value_scale: float | None = Field(
        None, exclude_if=_absent, description="The campaign's value scale s_i (its bid)."
    )
    pacing_multiplier: float | None = Field(
        None,
        exclude_if=_absent,
        description="α = 1/(1+μ), fixed before the auction from spend before it: the auction used α·s_i "
        "(truthful for the budget-adjusted utility α·r_i − p_i; docs/DESIGN.md § Pacing).",
    )
    budget_multiplier: float | None = Field(
        None,
        exclude_if=_absent,
        description="Below 1 when her payment at α·s_i did not fit what remains of her budget: the rewards "
        "were scaled by it until it did (0: left out of the draw, charged nothing).",
    )


class CandidateRecord(BaseModel):
    text: str
    log_ref: float = Field(description="log π_ref(y_j | x).")
    log_proposal: float = Field(description="log q(y_j), the density it was drawn from.")
    rewards: dict[str, float] = Field(description="r_i(y_j) by advertiser id.")
    probability: float = Field(description="π_j, the allocation probability.")
    proposal: Literal["context", "reference"] = Field(description="Which proposal drew it.")
    num_tokens: int
    finish_reason: str | None
    # issue 35, re-scoring (app.verification.rescore): the exact tokens scored and each raw log π_i
    token_ids: list[int] | None = Field(
        None, exclude_if=_absent, description="The reply's token ids as drawn and scored (EOS included)."
    )
    log_context: dict[str, float] | None = Field(
        None,
        exclude_if=_absent,
        description="log π_i(y_j | her context prompt) by advertiser id, as scored "
        "(r_i = α·s_i(this − log_ref)).",
    )


class AuctionTimings(BaseModel):
    tokenize: float
    generate: float
    score: float
    mechanism: float
    billing: float
    total: float
    workers: float = Field(description="Wall time with at least one worker request in flight.")
    idempotency: float = Field(0.0, description="Claiming the Idempotency-Key (0 without one).")


class AuctionResponse(BaseModel):
    auction_id: str
    reply: str
    disclosure: Disclosure = Field(
        description="For the user: whether the reply is sponsored and by whom (no amounts); render its "
        "`label` beside the reply (docs/DESIGN.md § Disclosure)."
    )
    chosen_index: int
    tau: float
    proposal: ProposalName
    seed: int = Field(description="The seed used (drawn when the request gave none).")
    currency: str
    advertisers: list[AdvertiserResult]
    revenue: float
    effective_sample_size: float
    timings_ms: AuctionTimings
    billing: BillingState = Field(
        "billed",
        description="`billed` (in the ledger), `pending` (BILLING_MODE=render, awaiting "
        "POST /auctions/{id}/render), `expired` (not rendered in time, never billed), `test` (never billed), "
        "`none` (a no-fill: nobody bid, nothing to bill).",
    )
    test: bool | None = Field(None, description="Present (true) on test auctions only.")
    excluded: list[CampaignExclusion] | None = Field(
        None, description="The requested campaigns left out of this auction, and why (absent when none)."
    )
    no_fill: NoFill | None = Field(
        None,
        exclude_if=_absent,
        description="Present when nobody bid: the reply is ONE sample of the reference model (π_ref, "
        "the request's seed), nothing scored, nothing billed (`billing: none`); why.",
    )
    selection: SelectionReport | None = Field(
        None,
        exclude_if=_absent,
        description="`select` requests: the campaigns considered and why each was left out.",
    )
    candidates: list[CandidateRecord] | None = None


class BudgetRecord(BaseModel):
    """What the budget fit of one campaign used and decided: with the seed and the candidate table,
    enough to replay a budget-binding auction (docs/DESIGN.md § Budgets)."""

    campaign_id: str
    advertiser_id: str
    day: str = Field(description="The campaign's day (its time zone) the spend counts on.")
    remaining_micro: int | None = Field(
        description="What remained of its budget when the fit ran (None: no limit)."
    )
    pacing_multiplier: float
    budget_multiplier: float
    rounds: int = Field(description="Rounds of the fit (0: nothing was lowered).")
    reserved_micro: int


class AuctionRecord(AuctionResponse):
    """What GET /auctions/{id} returns: the full response, candidates included, plus the request."""

    request: dict[str, Any]
    created_at_ms: int
    payments_micro: dict[str, int]
    budgets: list[BudgetRecord] | None = Field(
        None, description="Per campaign in the auction: what its budget fit saw (to replay it by seed)."
    )
    engine: EngineRecord | None = Field(
        None,
        exclude_if=_absent,
        description="Which worker engines drew and scored the candidates, and what each is (issue 35).",
    )
    attestation: RecordAttestation | None = Field(
        None,
        exclude_if=_absent,
        description="The record's signed statement (Ed25519), its signature and the salts of the "
        "advertisers' parts: `mosaic verify` checks them (absent when ATTESTATION_ENABLED=false).",
    )
