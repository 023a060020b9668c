"""Idempotency-Key outcomes by reference (issue 36): the parts that need no Redis.

Invariants:
- the answer rebuilt from a stored record's JSON text is the first answer's exact bytes, for any
  finite floats (payments down to 1e-300, past 1e16), any text, with or without the candidate table
  (`answer_from_record`: what the by-reference replay relies on, and what the write checks first);
- a by-reference done value reads back as the same reference (`done_ref_value` / `_judge`), is refused
  with another fingerprint, and holds no answer body.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.auction.answers import answer_from_record
from app.contract.disclosure import disclose
from app.contract.result import (
    AdvertiserResult,
    AuctionRecord,
    AuctionResponse,
    AuctionTimings,
    CandidateRecord,
)
from app.ledger.idempotency import (
    AnswerRef,
    IdempotencyClaim,
    IdempotencyMismatchError,
    _judge,
    answer_digest,
    done_ref_value,
)

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)


@st.composite
def responses(draw: st.DrawFn) -> AuctionResponse:
    ids = draw(st.lists(st.from_regex(r"[a-z]{1,8}", fullmatch=True), min_size=1, max_size=3, unique=True))
    rows = [
        CandidateRecord(
            text=draw(text),
            log_ref=draw(finite),
            log_proposal=draw(finite),
            rewards={a: draw(finite) for a in ids},
            probability=draw(st.floats(0, 1)),
            proposal="context",
            num_tokens=draw(st.integers(0, 64)),
            finish_reason="length",
            token_ids=draw(st.none() | st.lists(st.integers(0, 49151), max_size=5)),
        )
        for _ in range(draw(st.integers(1, 3)))
    ]
    timings = AuctionTimings(**{k: draw(finite) for k in AuctionTimings.model_fields})
    response = AuctionResponse(
        auction_id="a" * 32,
        reply=draw(text),
        disclosure=disclose(((a, a) for a in ids), {a: 1 for a in ids}, auction_id="a" * 32),
        chosen_index=0,
        tau=draw(finite),
        proposal="mixture",
        seed=draw(st.integers(0, 2**53)),
        currency="USD",
        advertisers=[
            AdvertiserResult(id=a, payment=draw(finite), expected_reward=draw(finite), expected_utility=0.0)
            for a in ids
        ],
        revenue=draw(finite),
        effective_sample_size=draw(finite),
        timings_ms=timings,
        billing=draw(st.sampled_from(["billed", "pending", "test"])),
        test=draw(st.none() | st.just(True)),
    )
    if draw(st.booleans()):
        response.candidates = rows
    return response


@settings(max_examples=150, deadline=None)
@given(responses())
def test_the_record_rebuilds_the_answer_byte_for_byte(response: AuctionResponse) -> None:
    body = response.model_dump_json(exclude_none=True)
    candidates = response.candidates or []
    record = AuctionRecord(
        **response.model_dump(exclude={"candidates"}),
        candidates=candidates,
        request={"query": "q", "include_candidates": response.candidates is not None},
        created_at_ms=1,
        payments_micro={},
    )
    assert answer_from_record(record.model_dump_json(), response.candidates is not None) == body


@given(st.from_regex(r"[0-9a-f]{32}", fullmatch=True), st.booleans(), st.text(max_size=50))
def test_a_reference_reads_back_as_itself(auction_id: str, candidates: bool, body: str) -> None:
    claim = IdempotencyClaim("mosaic:idem:k:x", "running", "fp-1")
    ref = AnswerRef(auction_id, candidates, answer_digest(body))
    value = done_ref_value(claim, 200, ref)
    assert "body" not in json.loads(value) and len(value) < 160
    outcome = _judge(value, "fp-1")
    assert outcome is not None and outcome.ref == ref and outcome.body is None and outcome.status == 200
    with pytest.raises(IdempotencyMismatchError):
        _judge(value, "fp-2")
