"""An advertiser's sealed view of an auction (`SealedAuctionRecord`, `SealedWhatIfResponse`) and her own
figures recomputed from it alone (`resolve_own`).

What an advertiser key reads of an auction it took part in (`GET /auctions/{id}`, `POST
/auctions/{id}/resolve`): her own request entry, rewards, payment and utility; the reply, the candidates'
texts, probabilities, log π_ref and log q; τ and M; and of the others only what she needs to recompute
her payment: per candidate, the sum of their rewards `others_reward_j = Σ_{k≠i} r_k(y_j)` (so that
ℓ_j = (reward_j + others_reward_j)/τ + log π_ref_j − log q_j). Never another advertiser's id, name,
description, instruction, value scale, payment or reward vector, nor the revenue (with two advertisers
it would be the other's payment). Built from a full record by `app.auction.sealed`.

`resolve_own(view, tau=..., value_scale=...)` is her payment, expected reward and utility by
`app.mechanism` on the view alone (with the view's τ and her value scale: the stored figures, to
rounding); the gateway's advertiser what-if is this function, so it cannot use more than the view.
Imports pydantic, numpy, `app.mechanism` and the other contract modules only; see docs/DESIGN.md.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from app import mechanism
from app.contract.attestation import SealedAttestation
from app.contract.disclosure import SealedDisclosure
from app.contract.engine import EngineRecord
from app.contract.request import AdvertiserIn, ProposalName
from app.contract.result import AdvertiserResult, BillingState


def _absent(value: object) -> bool:
    return value is None


class SealedRequest(BaseModel):
    """The auction's request as she may see it: the query, the settings, and her own entry only."""

    query: str
    advertiser: AdvertiserIn = Field(description="Her own entry, as it was sent.")
    tau: float | None = Field(description="τ as requested (null: the default was used).")
    candidates: int | None = Field(description="M as requested (null: the default).")
    proposal: ProposalName
    max_tokens: int | None
    temperature: float
    top_p: float
    seed: int | None
    test: bool


class SealedCandidate(BaseModel):
    """One candidate: its text and scores, her reward, and the others' rewards summed (never one by one)."""

    text: str
    log_ref: float = Field(description="log π_ref(y_j | x).")
    log_proposal: float = Field(description="log q(y_j), the density it was drawn from.")
    probability: float = Field(description="π_j, the allocation probability.")
    proposal: Literal["context", "reference"] = Field(description="Which proposal drew it.")
    num_tokens: int
    finish_reason: str | None
    reward: float = Field(description="r_i(y_j): her reward on this candidate.")
    others_reward: float = Field(
        description="Σ_{k≠i} r_k(y_j): the other advertisers' rewards on this candidate, summed (0 when "
        "she was alone). ℓ_j = (reward + others_reward)/τ + log_ref − log_proposal."
    )
    token_ids: list[int] | None = Field(
        None, exclude_if=_absent, description="The reply's token ids as drawn and scored (EOS included)."
    )
    log_context: dict[str, float] | None = Field(
        None,
        exclude_if=_absent,
        description="Her own entry only: log π_i(y_j | her context prompt), as scored (issue 35).",
    )


class SealedAuctionRecord(BaseModel):
    """What `GET /auctions/{id}` returns to an advertiser key: her sealed view of the auction."""

    view: Literal["sealed"] = Field("sealed", description="An advertiser's sealed view (her figures only).")
    auction_id: str
    reply: str
    disclosure: SealedDisclosure = Field(
        description="The reply's disclosure as she may see it: `sponsored`, her own entry when she is a "
        "sponsor and the count of the others (never their ids or names)."
    )
    chosen_index: int
    tau: float
    proposal: ProposalName
    seed: int
    currency: str
    billing: BillingState
    test: bool | None = Field(None, description="Present (true) on test auctions only.")
    created_at_ms: int
    advertiser: AdvertiserResult = Field(description="Her payment, expected reward and utility.")
    payment_micro: int = Field(description="Her payment in micro-units, as billed (0 for a test auction).")
    effective_sample_size: float
    candidates: list[SealedCandidate]
    request: SealedRequest
    engine: EngineRecord | None = Field(
        None, exclude_if=_absent, description="Which engines drew and scored the candidates (issue 35)."
    )
    attestation: SealedAttestation | None = Field(
        None,
        description="The signed statement, its signature, her salt, the shared part and her part: "
        "`mosaic verify` checks her part, the shared part and this view against them (absent when the "
        "record is not signed).",
    )


class SealedWhatIfResponse(BaseModel):
    """What `POST /auctions/{id}/resolve` answers an advertiser key: her own figures under the what-if."""

    view: Literal["sealed"] = Field("sealed", description="An advertiser's sealed view (her figures only).")
    auction_id: str
    tau: float
    currency: str
    billed: bool = Field(False, description="Always false: a what-if is never billed nor stored.")
    advertiser: AdvertiserResult = Field(description="Her payment, expected reward and utility.")
    probabilities: list[float] = Field(description="π_j by candidate, in the stored candidates' order.")
    effective_sample_size: float


def resolve_own(
    view: SealedAuctionRecord,
    *,
    tau: float | None = None,
    value_scale: float | None = None,
    alone: bool = False,
) -> SealedWhatIfResponse:
    """Her figures by `app.mechanism` from the sealed view alone.

    With no arguments: the auction as it ran (her stored payment, reward and utility, to rounding: the
    others enter as one row, Σ_{k≠i} r_k, which changes ℓ by at most a few ulps). `tau`: another τ;
    `value_scale`: her value scale s'_i (her rewards become r_i · s'_i / s_i); `alone`: the others
    dropped (their row set to 0). The candidates keep their log q: they were drawn from it.
    """
    own = np.array([c.reward for c in view.candidates], dtype=np.float64)
    if value_scale is not None:
        own *= value_scale / view.request.advertiser.value_scale
    others = np.array([0.0 if alone else c.others_reward for c in view.candidates], dtype=np.float64)
    rewards = np.stack([own, others])
    log_ref = np.array([c.log_ref for c in view.candidates], dtype=np.float64)
    log_proposal = np.array([c.log_proposal for c in view.candidates], dtype=np.float64)
    tau_value = view.tau if tau is None else tau
    probabilities, payments = mechanism.allocation_and_payments(rewards, log_ref, log_proposal, tau_value)
    utilities = mechanism.expected_utilities(rewards, log_ref, log_proposal, tau_value)
    return SealedWhatIfResponse(
        auction_id=view.auction_id,
        tau=float(tau_value),
        currency=view.currency,
        advertiser=AdvertiserResult(
            id=view.advertiser.id,
            payment=float(payments[0]),
            expected_reward=float(own @ probabilities),
            expected_utility=float(utilities[0]),
        ),
        probabilities=[float(p) for p in probabilities],
        effective_sample_size=mechanism.effective_sample_size(probabilities),
    )
