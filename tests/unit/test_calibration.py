"""Knowing what to bid (app.campaigns.calibration, POST /calibration's math): the cost curve and the
solved value scale, on random candidate tables (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import mechanism
from app.campaigns.calibration import (
    MAX_VALUE_SCALE,
    SampleAuction,
    cost_curve,
    expected_payment,
    mean_payment,
    solve_value_scale,
)

finite = st.floats(-30.0, 30.0, allow_nan=False)


@st.composite
def auctions(draw: st.DrawFn) -> list[SampleAuction]:
    """1-4 test auctions of 1-6 candidates, 0-2 other advertisers, τ in [0.2, 5]."""
    result = []
    for _ in range(draw(st.integers(1, 4))):
        m = draw(st.integers(1, 6))
        k = draw(st.integers(0, 2))
        column = st.lists(finite, min_size=m, max_size=m)
        result.append(
            SampleAuction(
                log_ref=np.array(draw(column)) - 40,
                log_proposal=np.array(draw(column)) - 40,
                log_ratio=np.array(draw(column)),
                others=np.array([draw(column) for _ in range(k)]).reshape(k, m),
                tau=draw(st.floats(0.2, 5.0)),
            )
        )
    return result


@given(auctions(), st.floats(0.0, 50.0), st.floats(0.0, 50.0))
def test_cost_is_non_decreasing_in_the_value_scale(sample: list[SampleAuction], s: float, t: float) -> None:
    """p'(s) = s·Var_π(λ)/τ ≥ 0: a higher value scale never costs less (up to float rounding)."""
    low, high = sorted((s, t))
    assert mean_payment(sample, low) <= mean_payment(sample, high) * (1 + 1e-9) + 1e-12


@given(auctions())
def test_cost_at_zero_is_zero_and_never_negative(sample: list[SampleAuction]) -> None:
    """s = 0 makes her reward zero on every candidate: she changes nothing and pays exactly 0."""
    assert mean_payment(sample, 0.0) == 0.0
    assert all(expected_payment(auction, 3.0) >= 0.0 for auction in sample)


@given(auctions(), st.floats(1e-3, 1e3))
def test_the_curve_is_the_mechanism_on_the_tables(sample: list[SampleAuction], s: float) -> None:
    """Each point is 1,000 × the mean of the mechanism's own payment with her row scaled to s."""
    expected = []
    for auction in sample:
        rewards = np.vstack([s * auction.log_ratio, auction.others])
        _, payments = mechanism.allocation_and_payments(
            rewards, auction.log_ref, auction.log_proposal, auction.tau
        )
        expected.append(max(0.0, float(payments[0])))
    (point,) = cost_curve(sample, [s])
    assert point.cost_per_auction == pytest.approx(np.mean(expected), rel=1e-12, abs=1e-15)
    assert point.cost_per_1000 == pytest.approx(1000 * np.mean(expected), rel=1e-12, abs=1e-12)


@settings(max_examples=60)
@given(auctions(), st.floats(0.01, 0.99))
def test_the_solved_scale_meets_the_target_within_one_micro(
    sample: list[SampleAuction], share: float
) -> None:
    """A target below what s = 1000 costs is met within one micro-unit per 1,000, or, where the curve
    is steeper than float64 resolves, as close as one ulp of s allows (flagged)."""
    top = 1e9 * mean_payment(sample, MAX_VALUE_SCALE)
    if top < 10:  # a flat curve (one candidate, equal ratios): nothing to solve
        return
    target = share * top
    solution = solve_value_scale(sample, target)
    assert solution.reached
    assert solution.cost_per_1000_micro == pytest.approx(1e9 * mean_payment(sample, solution.value_scale))
    if solution.within_tolerance:
        assert abs(solution.cost_per_1000_micro - target) <= 1.0
    else:  # steeper than float64: s and its next float bracket the target
        below = 1e9 * mean_payment(sample, np.nextafter(solution.value_scale, 0))
        above = 1e9 * mean_payment(sample, np.nextafter(solution.value_scale, np.inf))
        cost = solution.cost_per_1000_micro
        assert min(below, cost) - 1 <= target <= max(above, cost) + 1


def test_a_target_above_every_allowed_scale_reports_the_maximum() -> None:
    """When even s = 1000 costs less than the target: not reached, s = 1000 and the most it costs."""
    auction = SampleAuction.from_rewards(
        "a", 2.0, 1.0, [-1.0, -1.2], [-1.1, -1.1], {"a": [0.0, 0.002], "b": [1.0, 0.0]}
    )
    top = 1e9 * mean_payment([auction], MAX_VALUE_SCALE)
    solution = solve_value_scale([auction], top * 10)
    assert not solution.reached and solution.value_scale == MAX_VALUE_SCALE
    assert solution.cost_per_1000_micro == pytest.approx(top)


def test_from_rewards_divides_by_the_scale_it_ran_with() -> None:
    """Her rewards at s_run are s_run·λ: the table at s_run reproduces the auction's own payment."""
    rewards = {"a": [0.6, -0.2, 1.4], "b": [0.1, 0.3, -0.5]}
    log_ref, log_proposal = [-3.0, -2.0, -4.0], [-2.5, -2.5, -3.0]
    auction = SampleAuction.from_rewards("a", 2.0, 1.5, log_ref, log_proposal, rewards)
    _, payments = mechanism.allocation_and_payments(
        np.array([rewards["a"], rewards["b"]]), log_ref, log_proposal, 1.5
    )
    assert expected_payment(auction, 2.0) == pytest.approx(float(payments[0]), rel=1e-12)
    with pytest.raises(ValueError, match="no rewards"):
        SampleAuction.from_rewards("c", 2.0, 1.5, log_ref, log_proposal, rewards)


def test_every_field_of_an_answers_candidate_row_is_accepted_by_the_calibration() -> None:
    """Invariant: a candidate table exactly as `POST /auction` returns it (`CandidateRecord`, every field,
    the re-score's `token_ids` and `log_context` included) is a valid calibration candidate — the
    explorer sends it as is (tests/integration/test_explorer_browser.py)."""
    from app.contract.calibration import CalibrationCandidate
    from app.contract.result import CandidateRecord

    names = set(CandidateRecord.model_fields)
    assert names <= set(CalibrationCandidate.model_fields), names - set(CalibrationCandidate.model_fields)
    row = CandidateRecord(
        text="hi", log_ref=-1.0, log_proposal=-1.5, rewards={"a": 0.25}, probability=1.0, proposal="context",
        num_tokens=2, finish_reason="length", token_ids=[5, 6], log_context={"a": -0.75},
    )  # fmt: skip
    CalibrationCandidate.model_validate_json(row.model_dump_json())
