"""The disclosure rule (`app.contract.disclosure`) and `GET /auctions/{id}/why`'s logic (`app.auction.why`).

Invariants:
- an advertiser is a sponsor iff she is charged at least one micro-unit (`payments_micro[id] ≥ 1`):
  0 is not, 1 is; a test auction and a no-fill are never sponsored, whatever the payments;
- sponsors are listed by display name then id, whatever the order of the advertisers or the size of
  their payments; the disclosure holds no number at all (no amount, no rank by amount);
- the label is "Sponsored · " and the names, null when not sponsored;
- `metadata.advertisers_in_prompt` says whether the chosen reply was drawn from the context-aware
  proposal (whose prompt names every advertiser, charged or not), never for a no-fill;
- an advertiser's sealed disclosure names her alone and counts the others;
- with the mechanism's offset p_i = τ·KL(π‖π^{-i}): positive when r_i differs across the candidates,
  zero when it is constant (so nearly everyone who bids is disclosed);
- /why: each sponsor's basis (inline, listed campaign, selected campaign with what the selection saw),
  τ's basis, M; figures β·α·s_i and reward shares max(R_i, 0)/Σ_k max(R_k, 0) that sum to 1.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import mechanism
from app.auction.why import explain, reward_shares
from app.contract.disclosure import disclose, record_disclosure, seal_disclosure
from tests.sealed_checks import json_numbers

NAMES = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=12)


def test_the_rule_at_the_one_micro_boundary() -> None:
    """0 micro-units is not a sponsor, 1 is; an advertiser absent from the payments is not."""
    rows = [("zero", "Zero"), ("one", "One"), ("absent", "Absent")]
    disclosure = disclose(rows, {"zero": 0, "one": 1}, auction_id="a1")
    assert [s.id for s in disclosure.sponsors] == ["one"]
    assert disclosure.sponsored and disclosure.label == "Sponsored · One"
    assert disclosure.metadata.reason == "charged"
    assert disclosure.metadata.paid_by == ["one"] and disclosure.metadata.on_behalf_of == ["One"]
    assert disclosure.metadata.parameters == "/auctions/a1/why"


@pytest.mark.parametrize(
    ("flags", "reason"),
    [({"test": True}, "test"), ({"no_fill": True}, "no_fill"), ({}, "nobody_charged")],
)
def test_test_no_fill_and_nobody_charged_are_not_sponsored(flags: dict[str, bool], reason: str) -> None:
    """A test auction and a no-fill say not sponsored even when payments are stated; so does an auction
    where nobody was charged a micro-unit."""
    payments = {"a": 0, "b": 0} if not flags else {"a": 5_000_000, "b": 1}
    disclosure = disclose([("a", "A"), ("b", "B")], payments, auction_id="x", **flags)
    assert not disclosure.sponsored and disclosure.sponsors == [] and disclosure.label is None
    assert disclosure.metadata.reason == reason and disclosure.metadata.paid_by == []


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 10**6), NAMES), max_size=12, unique_by=lambda r: r[0]),
    payments=st.lists(st.integers(0, 10**12), min_size=12, max_size=12),
    data=st.data(),
)
def test_sponsors_are_exactly_the_charged_by_name_and_no_amount_is_shown(
    rows: list[tuple[int, str]], payments: list[int], data: st.DataObject
) -> None:
    advertisers = [(f"adv{number}x", name) for number, name in rows]
    micro = {aid: payments[i] for i, (aid, _) in enumerate(advertisers)}
    disclosure = disclose(advertisers, micro, auction_id="p")
    assert {s.id for s in disclosure.sponsors} == {aid for aid, value in micro.items() if value >= 1}
    keys = [(s.name.casefold(), s.name, s.id) for s in disclosure.sponsors]
    assert keys == sorted(keys)
    shuffled = data.draw(st.permutations(advertisers))
    assert disclose(shuffled, micro, auction_id="p") == disclosure  # request order does not matter
    shown = disclosure.model_dump(mode="json")
    assert shown["metadata"].pop("version") == 1
    assert json_numbers(shown) == []  # no amount, no count, no rank
    names = [s.name for s in disclosure.sponsors]
    assert disclosure.label == ("Sponsored · " + ", ".join(names) if names else None)
    for sponsor in disclosure.sponsors:
        sealed = seal_disclosure(disclosure, sponsor.id)
        assert sealed.sponsors == [sponsor] and sealed.other_sponsors == len(names) - 1
        assert sealed.metadata.paid_by == [sponsor.id]
        others = [s for s in disclosure.sponsors if s.id != sponsor.id]
        assert all(other.id not in json.dumps(sealed.model_dump(mode="json")) for other in others)


def test_a_sealed_label_counts_the_others() -> None:
    disclosure = disclose(
        [("a", "Alpha"), ("b", "Bravo"), ("c", "Charlie")], dict.fromkeys("abc", 9), auction_id="x"
    )
    assert disclosure.label == "Sponsored · Alpha, Bravo, Charlie"
    assert seal_disclosure(disclosure, "a").label == "Sponsored · Alpha + 2 others"
    assert seal_disclosure(disclosure, "zed").label == "Sponsored · 3 others"
    single = disclose([("a", "Alpha"), ("b", "Bravo")], {"a": 1, "b": 0}, auction_id="x")
    assert seal_disclosure(single, "b").label == "Sponsored · 1 other"
    assert (
        seal_disclosure(single, "a").label == "Sponsored · Alpha"
        and seal_disclosure(single, "a").other_sponsors == 0
    )


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 5),
    m=st.integers(2, 10),
    tau=st.floats(0.05, 20),
)
def test_the_offset_payment_is_tau_kl_positive_unless_rewards_are_constant(
    seed: int, n: int, m: int, tau: float
) -> None:
    """p_i = τ·KL(π‖π^{-i}) ≥ 0; > 0 when r_i differs across the candidates, 0 when it is constant:
    why nearly everyone who bids is charged ≥ 1 micro-unit and disclosed."""
    rng = np.random.default_rng(seed)
    log_ref = rng.normal(-20, 5, m)
    log_q = log_ref + rng.normal(0, 1, m)
    rewards = rng.normal(0, 1, (n, m))
    rewards[0] = rng.normal()  # advertiser 0: the same reward on every candidate
    probabilities, payments = mechanism.allocation_and_payments(rewards, log_ref, log_q, tau)
    for i in range(n):
        others = np.delete(rewards, i, axis=0)
        without, _ = mechanism.allocation_and_payments(
            others if len(others) else np.zeros((1, m)), log_ref, log_q, tau
        )
        kl = math.fsum(
            p * (math.log(p) - math.log(w)) for p, w in zip(probabilities, without, strict=True) if p > 0
        )
        assert payments[i] == pytest.approx(tau * kl, rel=1e-7, abs=1e-9)
        if i == 0:
            assert abs(payments[i]) < 1e-9
        elif np.ptp(rewards[i]) > 1e-3 and min(probabilities) > 1e-6:
            assert payments[i] > 0


# ---------------------------------------------------------------- /why


def _record(select: dict[str, Any] | None = None, tau: float | None = None) -> dict[str, Any]:
    """A stored record: inline `inl` (charged), campaign `kilo9` of owner `zulu9` (charged; listed or
    selected), inline `low` (not charged)."""
    advertisers = [
        {"id": "inl", "name": "Inline Co", "description": "d", "value_scale": 2.0},
        {"id": "low", "name": "Low", "description": "d", "value_scale": 1.0},
        {"id": "zulu9", "name": "Acme Brand", "description": "d", "value_scale": 0.5 * 0.8},
    ]
    outcome = [
        {"id": "inl", "payment": 0.3, "expected_reward": 0.6, "expected_utility": 0.3},
        {"id": "low", "payment": 4e-7, "expected_reward": -0.2, "expected_utility": 0.0},
        {
            **{"id": "zulu9", "payment": 0.1, "expected_reward": 0.2, "expected_utility": 0.1},
            **{
                "campaign_id": "kilo9",
                "value_scale": 0.5,
                "pacing_multiplier": 0.8,
                "budget_multiplier": 0.5,
            },
        },
    ]
    record: dict[str, Any] = {
        "auction_id": "abc",
        "tau": 1.5 if tau is None else tau,
        "proposal": "context",
        "advertisers": outcome,
        "payments_micro": {"inl": 300000, "low": 0, "zulu9": 100000},
        "candidates": [{"text": "x"}, {"text": "y"}, {"text": "z"}],
        "request": {"advertisers": advertisers, "tau": tau, "candidates": None, "select": select},
    }
    if select is not None:
        considered = [
            {
                "campaign_id": "kilo9",
                "owner": "zulu9",
                "relevance": 0.71,
                "keyword_match": True,
                "selected": True,
            },
            {
                "campaign_id": "other",
                "owner": "o2",
                "relevance": 0.1,
                "keyword_match": False,
                "selected": False,
            },
        ]
        record["selection"] = {"considered": considered}
    record["disclosure"] = record_disclosure(record).model_dump(mode="json")
    return record


def test_why_explains_each_sponsor_and_the_parameters() -> None:
    record = _record()
    why = explain(record)
    assert why.view == "full" and why.sponsored and why.reason == "charged" and why.other_sponsors is None
    assert [s.id for s in why.sponsors] == [
        "zulu9",
        "inl",
    ]  # by name: "Acme Brand" before "Inline Co"; `low` < 1 µ
    campaign, inline = why.sponsors
    assert campaign.basis == "campaign" and campaign.campaign_id == "kilo9" and "'kilo9'" in campaign.reason
    assert inline.basis == "inline" and inline.campaign_id is None and "inline" in inline.reason
    assert why.tau == 1.5 and why.tau_basis == "default" and why.candidates == 3 and why.proposal == "context"
    assert campaign.figures is not None and inline.figures is not None
    assert campaign.figures.paced_value_scale == pytest.approx(0.5 * 0.8 * 0.5)
    assert (campaign.figures.value_scale, campaign.figures.pacing_multiplier) == (0.5, 0.8)
    assert inline.figures.paced_value_scale == 2.0 and inline.figures.budget_multiplier == 1.0
    # shares: max(R, 0) / Σ max(R, 0) = 0.6/0.8 and 0.2/0.8 (`low`'s negative R counts 0)
    assert (inline.figures.reward_share, campaign.figures.reward_share) == pytest.approx((0.75, 0.25))
    assert explain(_record(tau=1.5)).tau_basis == "requested"


def test_why_of_a_selected_campaign_says_what_the_selection_saw() -> None:
    why = explain(_record(select={"max": 2, "min_relevance": None}))
    campaign = next(s for s in why.sponsors if s.id == "zulu9")
    assert campaign.basis == "selected" and campaign.selection is not None
    assert (campaign.selection.relevance, campaign.selection.keyword_match, campaign.selection.max) == (
        0.71,
        True,
        2,
    )
    assert "relevance 0.710" in campaign.reason and "keyword" in campaign.reason


def test_why_sealed_names_only_her_and_counts_the_others() -> None:
    record = _record()
    why = explain(record, "inl")
    assert why.view == "sealed" and [s.id for s in why.sponsors] == ["inl"] and why.other_sponsors == 1
    text = why.model_dump_json()
    assert "zulu9" not in text and "Acme Brand" not in text and "kilo9" not in text
    assert 0.2 not in json_numbers(json.loads(text))  # the other's expected reward
    # an advertiser who took part but was not charged a micro-unit: no entry, the sponsors counted
    low = explain(record, "low")
    assert low.sponsors == [] and low.other_sponsors == 2 and low.sponsored
    with pytest.raises(ValueError, match="did not take part"):
        explain(record, "ghost")


def test_why_of_no_fill_and_test_auctions() -> None:
    record = _record()
    record["disclosure"] = disclose([], {}, auction_id="abc", no_fill=True).model_dump(mode="json")
    assert explain(record).sponsors == [] and explain(record).reason == "no_fill"
    record["disclosure"] = disclose([("inl", "I")], {"inl": 5}, auction_id="abc", test=True).model_dump()
    assert not explain(record).sponsored and explain(record).reason == "test"


def test_reward_shares_sum_to_one_or_are_null() -> None:
    assert math.fsum(v for v in reward_shares(_record()).values() if v is not None) == pytest.approx(1.0)
    nobody = {"advertisers": [{"id": "a", "expected_reward": -1.0}, {"id": "b", "expected_reward": 0.0}]}
    assert reward_shares(nobody) == {"a": None, "b": None}


def test_a_record_stored_before_disclosures_gets_the_same_rule() -> None:
    record = _record()
    stored = record.pop("disclosure")
    assert record_disclosure(record).model_dump(mode="json") == stored


@pytest.mark.parametrize(("proposal", "flag"), [("context", True), ("reference", False)])
def test_the_metadata_says_when_the_reply_was_prompted_with_the_advertisers(
    proposal: str, flag: bool
) -> None:
    """M = 1 with the context proposal: nobody is charged (one candidate, nothing to steer), yet the
    reply was written under a prompt that names the advertisers: the metadata says so."""
    record = _record()
    record.pop("disclosure")
    record["payments_micro"] = {"inl": 0, "low": 0, "zulu9": 0}
    record["candidates"] = [{"text": "x", "proposal": proposal}]
    record["chosen_index"] = 0
    disclosure = record_disclosure(record)
    assert not disclosure.sponsored and disclosure.metadata.reason == "nobody_charged"
    assert disclosure.metadata.advertisers_in_prompt is flag
    nofill = disclose([], {}, auction_id="x", no_fill=True, advertisers_in_prompt=True)
    assert nofill.metadata.advertisers_in_prompt is False
