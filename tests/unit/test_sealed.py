"""Sealed views (`app.auction.sealed`, `app.contract.sealed`) on random full records.

A record is built as `AuctionService` stores one (an `AuctionRecord` through JSON), from random
inputs: n advertisers with their own secrets (id, name, description, instruction, value scale), M
candidates, τ. Invariants, for every advertiser X of it:
- X's sealed view holds no other advertiser's id, name, description or instruction (anywhere in its
  JSON), nor another's value scale, payment, expected reward or utility, nor (n ≥ 3) any other
  advertiser's reward on any candidate, nor the revenue; its fields are X's own and the per-candidate
  sum of the others' rewards (exactly rounded);
- her disclosure names no one but her (when she is charged ≥ 1 micro-unit) and counts the other
  sponsors; her /why (`app.auction.why.explain`) holds nothing of the others either;
- her payment, expected reward and utility recomputed from the view alone (`resolve_own`, the function
  `mosaic_client` exports) equal the stored ones to 1e-12 (relative or absolute, as the what-if's);
- signed (issue 35), her view carries the statement, the signature, HER salt only, the shared part
  and her part — still nothing of the others — and verifies (`app.verification.verify_document`);
- her what-if (`sealed_whatif`) equals the full what-if's row for her to 1e-12, and names no one else;
  a what-if naming any other id is refused with the field, the same whether that id took part or not.
The values are drawn from a seeded numpy generator (generic: no two figures coincide by chance).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from app import mechanism
from app.attestation.keys import SigningKey
from app.attestation.statement import attest
from app.auction.engine_answers import derive_seed
from app.auction.sampler import SEED_ALLOCATION
from app.auction.sealed import SealedFieldError, check_sealed_whatif, seal_record, sealed_whatif
from app.auction.whatif import resolve_record
from app.auction.why import explain
from app.contract.disclosure import disclose
from app.contract.request import AuctionRequest
from app.contract.result import AdvertiserResult, AuctionRecord, AuctionTimings, CandidateRecord
from app.contract.sealed import resolve_own
from app.contract.whatif import WhatIfRequest
from app.verification.verify import verify_document
from tests.sealed_checks import assert_nothing_of_the_others

TOLERANCE = 1e-12
SIGNER = SigningKey(Ed25519PrivateKey.generate())


def make_record(seed: int, n: int, m: int, tau: float) -> dict[str, Any]:
    """A stored record (as `GET /auctions/{id}` reads it, through JSON) with random secrets."""
    rng = np.random.default_rng(seed)
    scales = rng.uniform(0.05, 3.0, n)
    log_ref = rng.normal(-30, 8, m)
    log_q = log_ref + rng.normal(0, 2, m)
    log_advertisers = log_ref + rng.normal(0, 3, (n, m))
    rewards = mechanism.rewards_from_logprobs(log_advertisers, log_ref, scales)
    # drawn as the service draws (its seed's allocation stream): `mosaic verify` replays the draw
    outcome = mechanism.run_auction(
        rewards, log_ref, log_q, tau, np.random.default_rng(derive_seed(seed, SEED_ALLOCATION))
    )
    ids = [f"adv{i}q{seed % 997}" for i in range(n)]
    request = AuctionRequest.model_validate(
        {
            "query": "Learning to play the guitar.",
            "advertisers": [
                {
                    "id": aid,
                    "name": f"Name{i}z{seed % 991}",
                    "description": f"secret description {i} of {aid}",
                    "instruction": f"SECRET INSTRUCTION {i} of {aid}: mention Name{i}.",
                    "value_scale": float(scales[i]),
                }
                for i, aid in enumerate(ids)
            ],
            "tau": tau,
            "candidates": m,
            "seed": seed,
        }
    )
    payments_micro = {aid: round(float(outcome.payments[i]) * 1e6) for i, aid in enumerate(ids)}
    record = AuctionRecord(
        auction_id="f" * 32,
        reply=f"reply {outcome.chosen_index}",
        disclosure=disclose(
            ((a.id, a.name) for a in request.advertisers), payments_micro, auction_id="f" * 32
        ),
        chosen_index=outcome.chosen_index,
        tau=tau,
        proposal="context",
        seed=seed,
        currency="USD",
        advertisers=[
            AdvertiserResult(
                id=aid,
                payment=float(outcome.payments[i]),
                expected_reward=float(outcome.expected_rewards[i]),
                expected_utility=float(outcome.expected_utilities[i]),
            )
            for i, aid in enumerate(ids)
        ],
        revenue=outcome.revenue,
        effective_sample_size=outcome.effective_sample_size,
        timings_ms=AuctionTimings(
            tokenize=1, generate=2, score=3, mechanism=4, billing=5, total=6, workers=7
        ),
        candidates=[
            CandidateRecord(
                text=f"reply {j}",
                log_ref=float(log_ref[j]),
                log_proposal=float(log_q[j]),
                rewards={aid: float(rewards[i, j]) for i, aid in enumerate(ids)},
                probability=float(outcome.probabilities[j]),
                proposal="context",
                num_tokens=3,
                finish_reason="length",
                token_ids=[7, j, 9],
                log_context={aid: float(log_advertisers[i, j]) for i, aid in enumerate(ids)},
            )
            for j in range(m)
        ],
        request=request.model_dump(mode="json"),
        created_at_ms=1,
        payments_micro=payments_micro,
    )
    loaded: dict[str, Any] = json.loads(record.model_dump_json())
    return loaded


dimensions = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 6), st.integers(1, 12))
taus = st.floats(0.05, 50)


@settings(max_examples=80, deadline=None)
@given(dimensions=dimensions, tau=taus)
def test_a_sealed_view_holds_nothing_of_the_others_and_gives_her_payment(
    dimensions: tuple[int, int, int], tau: float
) -> None:
    seed, n, m = dimensions
    record = make_record(seed, n, m, tau)
    record["attestation"] = attest(record, SIGNER)
    for stored in record["advertisers"]:
        mine = stored["id"]
        view = seal_record(record, mine)
        body = json.loads(view.model_dump_json())
        assert_nothing_of_the_others(body, record, mine)
        assert body["attestation"]["salt"] == record["attestation"]["salts"][mine]
        assert "salts" not in body["attestation"] and body["attestation"]["part"]["advertiser_id"] == mine
        report = verify_document(body, {SIGNER.kid: SIGNER.public})
        assert report.ok, report.failures()
        assert view.advertiser.model_dump() == stored
        assert view.payment_micro == record["payments_micro"][mine]
        assert view.request.advertiser.id == mine and len(view.candidates) == m
        for shown, candidate in zip(view.candidates, record["candidates"], strict=True):
            assert shown.reward == candidate["rewards"][mine]
            assert shown.others_reward == math.fsum(v for k, v in candidate["rewards"].items() if k != mine)
            assert shown.probability == candidate["probability"]
            # issue 35: what her re-score needs, her own raw log π_i only
            assert shown.log_context == {mine: candidate["log_context"][mine]}
            assert shown.token_ids == candidate["token_ids"]
        own = resolve_own(view).advertiser
        for figure in ("payment", "expected_reward", "expected_utility"):
            assert getattr(own, figure) == pytest.approx(stored[figure], rel=TOLERANCE, abs=TOLERANCE), figure
        _her_disclosure_and_why(record, mine)


def _her_disclosure_and_why(record: dict[str, Any], mine: str) -> None:
    """Her disclosure names her alone (when she is charged ≥ 1 micro-unit) and counts the other
    sponsors; her /why likewise, with her figures only."""
    view = seal_record(record, mine)
    charged = {aid for aid, micro in record["payments_micro"].items() if micro >= 1}
    assert [s.id for s in view.disclosure.sponsors] == ([mine] if mine in charged else [])
    assert view.disclosure.other_sponsors == len(charged - {mine})
    assert view.disclosure.sponsored == bool(charged)
    why = explain(record, mine)
    assert_nothing_of_the_others(json.loads(why.model_dump_json()), record, mine)
    assert [s.id for s in why.sponsors] == [s.id for s in view.disclosure.sponsors]
    assert why.other_sponsors == view.disclosure.other_sponsors


@settings(max_examples=60, deadline=None)
@given(
    dimensions=dimensions,
    tau=taus,
    new_tau=taus,
    scale=st.none() | st.floats(0.01, 1e3),
    alone=st.booleans(),
)
def test_her_whatif_is_her_row_of_the_full_whatif(
    dimensions: tuple[int, int, int], tau: float, new_tau: float, scale: float | None, alone: bool
) -> None:
    seed, n, m = dimensions
    record = make_record(seed, n, m, tau)
    mine = record["advertisers"][-1]["id"]
    body: dict[str, Any] = {"tau": new_tau}
    if scale is not None:
        body["value_scales"] = {mine: scale}
    if alone:
        body["advertisers"] = [mine]
    request = WhatIfRequest.model_validate(body)
    sealed = sealed_whatif(record, request, mine)
    full = resolve_record(record, request)
    row = next(r for r in full.advertisers if r.id == mine)
    for figure in ("payment", "expected_reward", "expected_utility"):
        assert getattr(sealed.advertiser, figure) == pytest.approx(
            getattr(row, figure), rel=TOLERANCE, abs=TOLERANCE
        )
    np.testing.assert_allclose(sealed.probabilities, full.probabilities, rtol=0, atol=TOLERANCE)
    text = sealed.model_dump_json()
    assert all(r["id"] not in text for r in record["advertisers"] if r["id"] != mine)
    assert "revenue" not in text


@settings(max_examples=40, deadline=None)
@given(dimensions=dimensions, tau=taus, data=st.data())
def test_naming_another_advertiser_is_refused_with_the_field(
    dimensions: tuple[int, int, int], tau: float, data: st.DataObject
) -> None:
    seed, n, m = dimensions
    record = make_record(seed, n, m, tau)
    ids = [row["id"] for row in record["advertisers"]]
    mine = data.draw(st.sampled_from(ids))
    other = data.draw(st.sampled_from([*ids, "ghost", "nobody-else"]).filter(lambda x: x != mine))
    messages = []
    for body, field in (
        ({"tau": 1.0, "value_scales": {mine: 2.0, other: 2.0}}, f"value_scales[{other!r}]"),
        ({"tau": 1.0, "advertisers": [mine, other]}, "advertisers[1]"),
        ({"tau": 1.0, "advertisers": [other]}, "advertisers[0]"),
    ):
        with pytest.raises(SealedFieldError) as refused:
            check_sealed_whatif(WhatIfRequest.model_validate(body), mine)
        assert str(refused.value).startswith(field), str(refused.value)
        messages.append(str(refused.value).replace(other, "X"))
    # No oracle: the answer is the same whether `other` took part or not.
    ghost = []
    for body in (
        {"tau": 1.0, "value_scales": {mine: 2.0, "Q": 2.0}},
        {"tau": 1.0, "advertisers": [mine, "Q"]},
        {"tau": 1.0, "advertisers": ["Q"]},
    ):
        with pytest.raises(SealedFieldError) as refused:
            check_sealed_whatif(WhatIfRequest.model_validate(body), mine)
        ghost.append(str(refused.value).replace("Q", "X"))
    assert messages == ghost


def test_two_advertisers_the_sum_is_the_others_vector() -> None:
    """The disclosure DESIGN.md states: with one other advertiser, her view gives its reward vector."""
    record = make_record(7, 2, 5, 1.0)
    first, second = (row["id"] for row in record["advertisers"])
    view = seal_record(record, first)
    assert [c.others_reward for c in view.candidates] == [c["rewards"][second] for c in record["candidates"]]


def test_alone_the_others_sum_is_zero_and_not_a_participant_is_refused() -> None:
    record = make_record(3, 1, 4, 1.0)
    mine = record["advertisers"][0]["id"]
    assert all(c.others_reward == 0.0 for c in seal_record(record, mine).candidates)
    with pytest.raises(ValueError, match="did not take part"):
        seal_record(record, "someone-else")
