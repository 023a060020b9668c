"""An auction's outcome as the API states it: `ResolvedAuction` → `AuctionResponse` / `AuctionRecord`.

Job: the "build result" step of `app.auction.service` — the contract's models (`app.contract.result`)
from the scored candidates and the mechanism's outcome, with no I/O. Imports numpy, the mechanism's
outcome type, the sampler's scored candidates, the ledger's billing event and `app.contract`; see
docs/DESIGN.md § The path of one auction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from app import mechanism
from app.auction.sampler import ScoredCandidates
from app.campaigns.participants import Participants
from app.campaigns.spend import BudgetedOutcome
from app.contract.disclosure import Disclosure, disclose
from app.contract.result import (
    AdvertiserResult,
    AuctionRecord,
    AuctionResponse,
    AuctionTimings,
    BillingState,
    CandidateRecord,
)
from app.ledger.events import BillingEvent


@dataclass(frozen=True)
class ResolvedAuction:
    """The scored candidate set, the rewards r_i(y_j) built from it, and what the mechanism decided."""

    scored: ScoredCandidates
    rewards: np.ndarray  # (n, M)
    outcome: mechanism.AuctionOutcome

    def payments(self, advertiser_ids: list[str]) -> dict[str, float]:
        return {aid: float(self.outcome.payments[i]) for i, aid in enumerate(advertiser_ids)}


def candidate_records(resolved: ResolvedAuction, advertiser_ids: list[str]) -> list[CandidateRecord]:
    """The candidate table: each candidate's text, scores, rewards and allocation probability."""
    scored, outcome = resolved.scored, resolved.outcome
    return [
        CandidateRecord(
            text=candidate.text,
            log_ref=float(scored.log_ref[j]),
            log_proposal=float(scored.log_proposal[j]),
            rewards={aid: float(resolved.rewards[i, j]) for i, aid in enumerate(advertiser_ids)},
            probability=float(outcome.probabilities[j]),
            proposal=scored.candidate_set.sources[j],
            num_tokens=len(candidate.token_ids),
            finish_reason=candidate.finish_reason,
            token_ids=list(candidate.token_ids),
            log_context={aid: float(scored.log_advertisers[i, j]) for i, aid in enumerate(advertiser_ids)},
        )
        for j, candidate in enumerate(scored.candidate_set.candidates)
    ]


def auction_response(
    resolved: ResolvedAuction,
    participants: Participants,
    *,
    auction_id: str,
    seed: int,
    currency: str,
    timings: AuctionTimings,
    billing: BillingState,
    payments_micro: Mapping[str, int],
    budgeted: BudgetedOutcome | None = None,
) -> AuctionResponse:
    """What `POST /auction` answers (without the candidate table); `payments_micro` are the billing
    event's (the disclosure names who is charged at least one micro-unit)."""
    outcome = resolved.outcome
    request = participants.request
    return AuctionResponse(
        auction_id=auction_id,
        reply=resolved.scored.candidate_set.candidates[outcome.chosen_index].text,
        disclosure=response_disclosure(
            participants,
            payments_micro,
            auction_id,
            resolved.scored.candidate_set.sources[outcome.chosen_index],
        ),
        chosen_index=outcome.chosen_index,
        tau=outcome.tau,
        proposal=request.proposal,
        seed=seed,
        currency=currency,
        advertisers=[
            _advertiser_result(participants, outcome, i, budgeted) for i in range(len(request.advertisers))
        ],
        revenue=float(outcome.revenue),
        effective_sample_size=float(outcome.effective_sample_size),
        timings_ms=timings,
        billing=billing,
        test=True if request.test else None,
        excluded=list(participants.excluded) or None,
        selection=participants.selection,
    )


def response_disclosure(
    participants: Participants, payments_micro: Mapping[str, int], auction_id: str, drawn_from: str
) -> Disclosure:
    """The reply's disclosure (`app.contract.disclosure.disclose`): the advertisers as the auction ran
    them (a campaign's display name is its `name`), charged by the billing event's `payments_micro`;
    `drawn_from`: the proposal that drew the chosen reply."""
    request = participants.request
    return disclose(
        ((advertiser.id, advertiser.name) for advertiser in request.advertisers),
        payments_micro,
        auction_id=auction_id,
        test=request.test,
        no_fill=participants.no_fill is not None,
        advertisers_in_prompt=drawn_from == "context",
    )


def _advertiser_result(
    participants: Participants, outcome: mechanism.AuctionOutcome, row: int, budgeted: BudgetedOutcome | None
) -> AdvertiserResult:
    """Row `row`'s outcome; a campaign's also says its bid and the multipliers the auction applied."""
    result = AdvertiserResult(
        id=participants.request.advertisers[row].id,
        payment=float(outcome.payments[row]),
        expected_reward=float(outcome.expected_rewards[row]),
        expected_utility=float(outcome.expected_utilities[row]),
    )
    entry = participants.campaign_of(row)
    if entry is not None:
        result.campaign_id = entry.campaign.id
        result.value_scale = entry.campaign.value_scale
        result.pacing_multiplier = entry.pacing_alpha
        result.budget_multiplier = float(budgeted.alphas[row]) if budgeted is not None else 1.0
    return result


def auction_record(
    response: AuctionResponse,
    candidates: list[CandidateRecord],
    participants: Participants,
    event: BillingEvent,
    budgeted: BudgetedOutcome | None = None,
) -> AuctionRecord:
    """What `GET /auctions/{id}` returns: the response, the candidate table and the request as the auction
    ran it (campaigns' advertisers included, bidding α·s_i), with what each budget fit saw."""
    return AuctionRecord(
        **response.model_dump(exclude={"candidates"}),
        candidates=candidates,
        request=participants.request.model_dump(mode="json"),
        created_at_ms=event.created_at_ms,
        payments_micro=event.payments_micro,
        budgets=list(budgeted.records) if budgeted is not None else None,
    )
