"""What `POST /auction` answers (`AuctionResponse`) and `GET /auctions/{id}` returns (`AuctionRecord`).

Built from an auction's outcome by `app.auction.result`. Imports pydantic and `app.contract.request`
only; see docs/DESIGN.md § Layout.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.contract.request import ProposalName

BillingState = Literal["billed", "pending", "expired", "test"]


class AdvertiserResult(BaseModel):
    id: str
    payment: float = Field(description="p_i = R_i − U_i, charged (expected, not realised).")
    expected_reward: float = Field(description="R_i = Σ_j π_j r_i(y_j).")
    expected_utility: float = Field(description="U_i = τ LSE(ℓ) − τ LSE(β_{-i}).")


class CandidateRecord(BaseModel):
    text: str
    log_ref: float = Field(description="log π_ref(y_j | x).")
    log_proposal: float = Field(description="log q(y_j), the density it was drawn from.")
    rewards: dict[str, float] = Field(description="r_i(y_j) by advertiser id.")
    probability: float = Field(description="π_j, the allocation probability.")
    proposal: Literal["context", "reference"] = Field(description="Which proposal drew it.")
    num_tokens: int
    finish_reason: str | None


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
        "POST /auctions/{id}/render), `expired` (not rendered in time, never billed), `test` (never billed).",
    )
    test: bool | None = Field(None, description="Present (true) on test auctions only.")
    candidates: list[CandidateRecord] | None = None


class AuctionRecord(AuctionResponse):
    """What GET /auctions/{id} returns: the full response, candidates included, plus the request."""

    request: dict[str, Any]
    created_at_ms: int
    payments_micro: dict[str, int]
