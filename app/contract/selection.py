"""Which campaigns an auction considered and why each was left out; why an auction had no ad.

`ExclusionReason` (why a campaign is not in an auction), `SelectionReport` (what the selection step of a
`select` request saw: the explorer shows it), `NoFill` (why nobody bid: the reply is then organic,
nothing billed); the request's `select` itself is `app.contract.request.SelectionIn`. A leaf of the
contract: imports pydantic only (result.py imports it); see docs/DESIGN.md § Layout.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

# Why a campaign is not in the auction (app.campaigns.eligibility, the resolver and the selector decide).
ExclusionReason = Literal[
    "not_found",
    "paused",
    "archived",
    "not_started",
    "ended",
    "out_of_budget",
    "same_owner",
    "not_relevant",
    "negative_keyword",
    "blocked_category",
    "bcat",
    "badv",
    "frequency_capped",
]

EXCLUSION_DESCRIPTION = (
    "`not_found`, `paused`, `archived`, `not_started` / `ended` (its schedule), `out_of_budget` (nothing "
    "left today or in total), `same_owner` (its owner is in the auction already), `not_relevant` (below "
    "the relevance threshold), `negative_keyword` (one of its negative keywords is in the query), "
    "`blocked_category` (its own blocked categories meet the query's), `bcat` (its categories meet the "
    "request's `bcat`), `badv` (its owner is in the request's `badv`), `frequency_capped` (this "
    "`user_id` reached its frequency cap)."
)

NoFillReason = Literal[
    "no_relevant_campaign", "sensitive_topic", "no_consent", "all_capped", "all_out_of_budget", "all_excluded"
]


class ConsideredCampaign(BaseModel):
    """One campaign the selection looked at."""

    campaign_id: str
    owner: str
    relevance: float = Field(description="Cosine similarity of the query and the campaign (−1 … 1).")
    keyword_match: bool = Field(description="One of its targeting keywords is in the query.")
    selected: bool
    reason: ExclusionReason | None = Field(
        None, description="Why it was left out; null when selected or when outranked (more than `max`)."
    )


class SensitiveMatch(BaseModel):
    category: str = Field(description="The sensitive category the query matched.")
    similarity: float


class SelectionReport(BaseModel):
    """What the selection step saw (`select` requests): shown by the explorer."""

    considered: list[ConsideredCampaign]
    query_categories: list[str] = Field(description="Content category ids of the query.")
    sensitive: SensitiveMatch | None = Field(None, description="The sensitive topic that turned ads off.")
    embedding_ms: float = Field(description="The query's embedding.")
    selection_ms: float = Field(description="Everything after the embedding.")


class NoFill(BaseModel):
    """Why nobody bid: the reply is one organic sample of the reference model, nothing billed."""

    reason: NoFillReason = Field(
        description="`no_consent` (regs.coppa, regs.minor or no ads consent), `sensitive_topic`, "
        "`all_capped` / `all_out_of_budget` (every campaign left out for that reason), "
        "`no_relevant_campaign` (selection found none), `all_excluded` (every campaign left out)."
    )
    detail: str = Field(description="In words, e.g. which sensitive category or flag.")
