"""The what-if (`app.auction.whatif.resolve_record`) against the mechanism, recomputed to 1e-12.

A record is built the way `AuctionService` stores one (candidates with log π_ref, log q, rewards and
π; advertisers with payment, R, U; the request with the value scales), from random inputs; the
what-if must then equal `app.mechanism` run directly on the arrays: same τ → the stored outcome;
another τ, a subset of advertisers (rows dropped) or changed value scales (rows rescaled) → the
mechanism on those arrays. Nothing in it may write (it has no I/O: the record is left unchanged).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from app import mechanism
from app.auction.whatif import WhatIfInputError, resolve_record
from app.contract.whatif import WhatIfRequest

TOLERANCE = 1e-12


def make_record(seed: int, n: int, m: int, tau: float, scales: list[float]) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    log_ref = rng.normal(-40, 10, m)
    log_q = log_ref + rng.normal(0, 3, m)
    log_adv = log_ref + rng.normal(0, 4, (n, m))
    rewards = mechanism.rewards_from_logprobs(log_adv, log_ref, np.array(scales))
    outcome = mechanism.run_auction(rewards, log_ref, log_q, tau, np.random.default_rng(seed))
    ids = [f"adv{i}" for i in range(n)]
    record = {
        "auction_id": "a" * 32,
        "tau": tau,
        "currency": "USD",
        "advertisers": [
            {
                "id": aid,
                "payment": float(outcome.payments[i]),
                "expected_reward": float(outcome.expected_rewards[i]),
                "expected_utility": float(outcome.expected_utilities[i]),
            }
            for i, aid in enumerate(ids)
        ],
        "effective_sample_size": outcome.effective_sample_size,
        "candidates": [
            {
                "text": f"reply {j}",
                "log_ref": float(log_ref[j]),
                "log_proposal": float(log_q[j]),
                "rewards": {aid: float(rewards[i, j]) for i, aid in enumerate(ids)},
                "probability": float(outcome.probabilities[j]),
            }
            for j in range(m)
        ],
        "request": {
            "advertisers": [
                {"id": aid, "name": aid, "description": "d", "value_scale": scales[i]}
                for i, aid in enumerate(ids)
            ]
        },
    }
    # As stored: through JSON (floats round-trip exactly).
    loaded: dict[str, Any] = json.loads(json.dumps(record))
    return loaded


def arrays(record: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = [row["id"] for row in record["advertisers"]]
    rewards = np.array([[c["rewards"][aid] for c in record["candidates"]] for aid in ids])
    log_ref = np.array([c["log_ref"] for c in record["candidates"]])
    log_q = np.array([c["log_proposal"] for c in record["candidates"]])
    return rewards, log_ref, log_q


def assert_matches(
    result: Any, rewards: np.ndarray, log_ref: np.ndarray, log_q: np.ndarray, tau: float
) -> None:
    probabilities, payments = mechanism.allocation_and_payments(rewards, log_ref, log_q, tau)
    utilities = mechanism.expected_utilities(rewards, log_ref, log_q, tau)
    np.testing.assert_allclose(result.probabilities, probabilities, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(
        [a.payment for a in result.advertisers], payments, rtol=TOLERANCE, atol=TOLERANCE
    )
    np.testing.assert_allclose(
        [a.expected_reward for a in result.advertisers],
        rewards @ probabilities,
        rtol=TOLERANCE,
        atol=TOLERANCE,
    )
    np.testing.assert_allclose(
        [a.expected_utility for a in result.advertisers], utilities, rtol=TOLERANCE, atol=TOLERANCE
    )
    assert result.revenue == pytest.approx(float(payments.sum()), rel=TOLERANCE, abs=TOLERANCE)
    assert result.effective_sample_size == pytest.approx(1 / float(probabilities @ probabilities), rel=1e-12)
    assert result.billed is False


dimensions = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 5), st.integers(1, 12))
taus = st.floats(0.05, 50)


@settings(max_examples=60, deadline=None)
@given(dimensions=dimensions, tau=taus)
def test_the_same_tau_gives_the_stored_outcome(dimensions: tuple[int, int, int], tau: float) -> None:
    seed, n, m = dimensions
    record = make_record(seed, n, m, tau, [1.0] * n)
    result = resolve_record(record, WhatIfRequest(tau=tau))
    np.testing.assert_allclose(
        result.probabilities, [c["probability"] for c in record["candidates"]], rtol=0, atol=TOLERANCE
    )
    for got, stored in zip(result.advertisers, record["advertisers"], strict=True):
        assert got.id == stored["id"]
        assert got.payment == pytest.approx(stored["payment"], rel=TOLERANCE, abs=TOLERANCE)
        assert got.expected_utility == pytest.approx(stored["expected_utility"], rel=TOLERANCE, abs=TOLERANCE)
    assert result.effective_sample_size == pytest.approx(record["effective_sample_size"], rel=TOLERANCE)


@settings(max_examples=60, deadline=None)
@given(dimensions=dimensions, tau=taus, new_tau=taus)
def test_another_tau_is_the_mechanism_on_the_stored_candidates(
    dimensions: tuple[int, int, int], tau: float, new_tau: float
) -> None:
    seed, n, m = dimensions
    record = make_record(seed, n, m, tau, [1.0] * n)
    before = copy.deepcopy(record)
    result = resolve_record(record, WhatIfRequest(tau=new_tau))
    assert_matches(result, *arrays(record), new_tau)
    assert record == before  # read only


@settings(max_examples=40, deadline=None)
@given(dimensions=dimensions, tau=taus, data=st.data())
def test_a_subset_drops_the_other_rows(
    dimensions: tuple[int, int, int], tau: float, data: st.DataObject
) -> None:
    seed, n, m = dimensions
    record = make_record(seed, n, m, 1.0, [1.0] * n)
    keep = sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1)))
    # given in any order: the answer keeps the stored order
    chosen = data.draw(st.permutations([f"adv{i}" for i in keep]))
    result = resolve_record(record, WhatIfRequest(tau=tau, advertisers=list(chosen)))
    rewards, log_ref, log_q = arrays(record)
    assert [a.id for a in result.advertisers] == [f"adv{i}" for i in keep]
    assert_matches(result, rewards[keep], log_ref, log_q, tau)


@settings(max_examples=40, deadline=None)
@given(dimensions=dimensions, tau=taus, data=st.data())
def test_value_scales_rescale_the_rewards(
    dimensions: tuple[int, int, int], tau: float, data: st.DataObject
) -> None:
    seed, n, m = dimensions
    old = data.draw(st.lists(st.floats(0.1, 10), min_size=n, max_size=n))
    record = make_record(seed, n, m, 1.0, old)
    changed = data.draw(st.dictionaries(st.integers(0, n - 1), st.floats(0.1, 10)))
    result = resolve_record(
        record, WhatIfRequest(tau=tau, value_scales={f"adv{i}": s for i, s in changed.items()})
    )
    rewards, log_ref, log_q = arrays(record)
    for i, scale in changed.items():
        rewards[i] *= scale / old[i]
    assert_matches(result, rewards, log_ref, log_q, tau)


def test_a_changed_scale_equals_running_with_that_scale() -> None:
    """r'_i = s'_i (log π_i − log π_ref): the rescaled stored reward is the reward at the new scale."""
    first = make_record(7, 2, 6, 1.0, [1.0, 1.0])
    second = make_record(7, 2, 6, 1.0, [3.0, 1.0])
    result = resolve_record(first, WhatIfRequest(tau=1.0, value_scales={"adv0": 3.0}))
    np.testing.assert_allclose(
        result.probabilities, [c["probability"] for c in second["candidates"]], rtol=0, atol=TOLERANCE
    )


def test_unknown_advertisers_are_named() -> None:
    record = make_record(1, 2, 3, 1.0, [1.0, 1.0])
    with pytest.raises(WhatIfInputError) as error:
        resolve_record(record, WhatIfRequest(tau=1.0, advertisers=["adv0", "nobody"]))
    assert error.value.loc == ("advertisers", 1)
    with pytest.raises(WhatIfInputError) as error:
        resolve_record(record, WhatIfRequest(tau=1.0, value_scales={"ghost": 2.0}))
    assert error.value.loc == ("value_scales", "ghost")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"tau": 0},
        {"tau": 1e7},
        {"tau": True},
        {"tau": "1"},
        {"tau": 1, "advertisers": []},
        {"tau": 1, "advertisers": ["a", "a"]},
        {"tau": 1, "value_scales": {"a": 0}},
        {"tau": 1, "value_scales": {"a": 1001}},
        {"tau": 1, "extra": 1},
    ],
)
def test_invalid_requests_are_refused(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        WhatIfRequest.model_validate(body)
