"""The `selection` report of `POST /auction` with `select`: which campaigns were considered, and why.

What the explorer shows: each considered campaign's relevance, whether a targeted keyword matched,
whether it was selected and, if not, the reason; the query's content categories; the sensitive topic
that turned ads off, if any; the time of the query's embedding and of the selection after it. Imports
pydantic and `app.contract.result` only; see docs/DESIGN.md § Layout.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.contract.result import ExclusionReason


class ConsideredCampaign(BaseModel):
    campaign_id: str
    owner: str
    relevance: float = Field(description="Cosine of the query's and the campaign's embeddings.")
    keyword_match: bool = Field(description="One of its targeted keywords matched the query (broad match).")
    selected: bool
    reason: ExclusionReason | None = Field(
        None, description="Why it was left out; null when selected or when outranked (more than `max`)."
    )


class SensitiveTopic(BaseModel):
    category: str = Field(description="The sensitive category id the query matched.")
    similarity: float


class SelectionReport(BaseModel):
    considered: list[ConsideredCampaign]
    query_categories: list[str] = Field(description="The query's content category ids, most similar first.")
    sensitive: SensitiveTopic | None = None
    embedding_ms: float = Field(description="The query's embedding.")
    selection_ms: float = Field(description="The selection after the embedding (index, rules, budgets).")
