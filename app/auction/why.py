"""`GET /auctions/{id}/why` from a stored record: per sponsor why she took part, and her figures.

Job: `explain(record, advertiser_id)` (pure: a stored record as `GET /auctions/{id}` reads it →
`AuctionWhy`). The sponsors are the record's disclosure's (`app.contract.disclosure`), in its order.
Why each took part: a campaign the selection of a `select` request chose (its relevance and keyword
match from `selection.considered`), a campaign the caller listed in `campaigns`, or an inline
advertiser; of the auction τ (requested or default), M and the proposal. Her figures: s_i, α, β,
β·α·s_i, R_i and her reward share max(R_i, 0) / Σ_k max(R_k, 0) over everyone in the auction.
`advertiser_id` None is the full view (platform key, auth off: everyone's figures); an advertiser id the
sealed one: her own entry and figures, the other sponsors counted, never named (the sealed views'
invariant, docs/DESIGN.md § Sealed views). No I/O. Imports `app.contract` only; see docs/DESIGN.md
§ Disclosure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from app.contract.disclosure import Sponsor, record_disclosure
from app.contract.why import AuctionWhy, SelectionWhy, SponsorFigures, SponsorWhy


def _rows(record: Mapping[str, Any], key: str) -> dict[str, dict[str, Any]]:
    """The record's `advertisers` (outcome rows) or its request's, by advertiser id."""
    rows = record.get("advertisers") if key == "outcome" else (record.get("request") or {}).get("advertisers")
    return {str(row["id"]): row for row in rows or []}


def reward_shares(record: Mapping[str, Any]) -> dict[str, float | None]:
    """max(R_i, 0) / Σ_k max(R_k, 0) by advertiser id (None when no one expected a positive reward)."""
    positive = {aid: max(float(row["expected_reward"]), 0.0) for aid, row in _rows(record, "outcome").items()}
    total = math.fsum(positive.values())
    return {aid: (value / total if total > 0 else None) for aid, value in positive.items()}


def _figures(outcome: Mapping[str, Any], entry: Mapping[str, Any], share: float | None) -> SponsorFigures:
    alpha = float(outcome.get("pacing_multiplier") or 1.0)
    beta = float(outcome.get("budget_multiplier", 1.0))
    # A campaign's row states its bid s_i; its request entry bids α·s_i. An inline entry bids s_i.
    scale = (
        float(outcome["value_scale"])
        if outcome.get("value_scale") is not None
        else float(entry["value_scale"])
    )
    return SponsorFigures(
        value_scale=scale,
        pacing_multiplier=alpha,
        budget_multiplier=beta,
        paced_value_scale=beta * alpha * scale,
        expected_reward=float(outcome["expected_reward"]),
        reward_share=share,
    )


def _selected(record: Mapping[str, Any], campaign_id: str) -> SelectionWhy | None:
    """What the selection saw of `campaign_id`, when a `select` request's selection chose it."""
    select = (record.get("request") or {}).get("select")
    considered = (record.get("selection") or {}).get("considered") or []
    seen = next((c for c in considered if c.get("campaign_id") == campaign_id and c.get("selected")), None)
    if select is None or seen is None:
        return None
    return SelectionWhy(
        relevance=float(seen["relevance"]),
        keyword_match=bool(seen["keyword_match"]),
        max=int(select["max"]),
        min_relevance=select.get("min_relevance"),
    )


def _sponsor(record: Mapping[str, Any], sponsor: Sponsor, figures: SponsorFigures | None) -> SponsorWhy:
    outcome = _rows(record, "outcome").get(sponsor.id, {})
    campaign_id = outcome.get("campaign_id")
    why = SponsorWhy(id=sponsor.id, name=sponsor.name, basis="inline", reason="", figures=figures)
    if campaign_id is None:
        why.reason = "listed by the caller: one of the inline advertisers of the request"
        return why
    why.campaign_id = str(campaign_id)
    why.selection = _selected(record, why.campaign_id)
    if why.selection is None:
        why.basis = "campaign"
        why.reason = f"listed by the caller: campaign {campaign_id!r} in the request's campaigns"
        return why
    keyword = ", and one of its targeting keywords is in the query" if why.selection.keyword_match else ""
    why.basis = "selected"
    why.reason = (
        f"selected for the query: campaign {campaign_id!r}, relevance {why.selection.relevance:.3f}{keyword}"
    )
    return why


def explain(record: Mapping[str, Any], advertiser_id: str | None = None) -> AuctionWhy:
    """The /why of a stored record: the full view (`advertiser_id` None) or advertiser `advertiser_id`'s
    sealed view (ValueError when she did not take part)."""
    outcome, entries = _rows(record, "outcome"), _rows(record, "request")
    if advertiser_id is not None and advertiser_id not in outcome:
        raise ValueError(
            f"advertiser {advertiser_id!r} did not take part in auction {record['auction_id']!r}"
        )
    disclosure = record_disclosure(record)
    shares = reward_shares(record)
    sponsors = [s for s in disclosure.sponsors if advertiser_id is None or s.id == advertiser_id]
    request = record.get("request") or {}
    candidates = record.get("candidates") or []
    return AuctionWhy(
        auction_id=str(record["auction_id"]),
        view="full" if advertiser_id is None else "sealed",
        sponsored=disclosure.sponsored,
        reason=disclosure.metadata.reason,
        tau=float(record["tau"]),
        tau_basis="default" if request.get("tau") is None else "requested",
        candidates=len(candidates) or int(request.get("candidates") or 1),
        proposal=record["proposal"],
        sponsors=[
            _sponsor(record, s, _figures(outcome[s.id], entries.get(s.id, {}), shares.get(s.id)))
            for s in sponsors
        ],
        other_sponsors=None if advertiser_id is None else len(disclosure.sponsors) - len(sponsors),
    )
