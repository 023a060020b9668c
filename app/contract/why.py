"""What `GET /auctions/{id}/why` answers (`AuctionWhy`): the main parameters behind a reply's sponsors.

DSA art. 26(1)(d) asks for "the main parameters used to determine" the ad: per sponsor, why she took
part (`SponsorWhy.basis`: chosen by the service's selection for the query, or listed by the caller as a
campaign or an inline advertiser), and of the auction τ, M and the proposal. Her figures
(`SponsorFigures`: her value scale with the pacing and budget multipliers, her expected reward and her
share of the reply's expected reward) go to the platform and to her alone. Built by `app.auction.why`.
Imports pydantic and the other `app.contract` modules only; see docs/DESIGN.md § Disclosure.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.contract.disclosure import REASON_DESCRIPTION, DisclosureReason
from app.contract.request import ProposalName

WhyBasis = Literal["selected", "campaign", "inline"]


class SelectionWhy(BaseModel):
    """What the selection of a `select` request saw of her campaign (`selection.considered`)."""

    relevance: float = Field(description="Cosine similarity of the query and the campaign (−1 … 1).")
    keyword_match: bool = Field(description="One of the campaign's targeting keywords is in the query.")
    max: int = Field(description="The request's `select.max`: most campaigns selected.")
    min_relevance: float | None = Field(
        description="The request's `select.min_relevance` (null: the service's SELECTION_MIN_RELEVANCE)."
    )


class SponsorFigures(BaseModel):
    """Her bid as the auction applied it and what she expected of the reply: to the platform and to her."""

    value_scale: float = Field(
        description="s_i: her value scale as she bid it (a campaign's, an inline one's)."
    )
    pacing_multiplier: float = Field(description="α = 1/(1+μ) of her campaign's pacing (1 inline).")
    budget_multiplier: float = Field(description="β ≤ 1 that fitted her payment to her budget (1 inline).")
    paced_value_scale: float = Field(
        description="β·α·s_i: the scale her rewards entered the mechanism with, r_i = β·α·s_i·log(π_i/π_ref)."
    )
    expected_reward: float = Field(description="R_i = Σ_j π_j r_i(y_j): her expected reward from the reply.")
    reward_share: float | None = Field(
        description="Her share of the reply's expected reward: max(R_i, 0) / Σ_k max(R_k, 0) over everyone "
        "in the auction (0 … 1; null when nobody expected a positive reward)."
    )


class SponsorWhy(BaseModel):
    """One sponsor: who, and why she took part."""

    id: str = Field(description="Her advertiser id (the account charged).")
    name: str = Field(description="Her display name, as the disclosure shows it.")
    basis: WhyBasis = Field(
        description="`selected` (the service chose her campaign for the query: `select`), `campaign` (the "
        "caller listed her campaign in `campaigns`), `inline` (the caller listed her in `advertisers`)."
    )
    reason: str = Field(description="The same, in words.")
    campaign_id: str | None = Field(None, description="Her campaign (absent when inline).")
    selection: SelectionWhy | None = Field(None, description="`selected`: what the selection saw of her.")
    figures: SponsorFigures | None = Field(
        None, description="Her figures: to the platform, and to her own advertiser key only."
    )


class AuctionWhy(BaseModel):
    """Why the reply is sponsored and by whom, with the auction's main parameters (DSA art. 26(1)(d))."""

    auction_id: str
    view: Literal["full", "sealed"] = Field(
        description="`full` (a platform key or auth off: every sponsor's figures), `sealed` (an advertiser "
        "key: her own entry and figures, the others counted in `other_sponsors`, never named)."
    )
    sponsored: bool
    reason: DisclosureReason = Field(description=REASON_DESCRIPTION)
    tau: float = Field(description="τ, the weight on the user: higher keeps the reply closer to π_ref.")
    tau_basis: Literal["requested", "default"] = Field(
        description="`requested` by the caller, or the `default` (1 up to two advertisers, n/2 above)."
    )
    candidates: int = Field(description="M, the candidate replies the reply was drawn from.")
    proposal: ProposalName = Field(
        description="Where the candidates came from: `context` (a prompt naming the advertisers), "
        "`reference` (π_ref alone) or a `mixture` of both."
    )
    sponsors: list[SponsorWhy] = Field(description="By name then id, as the disclosure lists them.")
    other_sponsors: int | None = Field(
        None, ge=0, description="Sealed view only: how many other sponsors there are (never who)."
    )
