"""Unit tests of the evaluation's metrics (app.evaluation.metrics), row building (app.evaluation.rows)
and claim verdicts (app.evaluation.claims), on hand-made inputs whose answers are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from app import mechanism
from app.evaluation import metrics as em
from app.evaluation.claims import FAILS, HOLDS, INCONCLUSIVE, UNTESTED, _sign_verdict, paper_claims
from app.evaluation.instances import Instance
from app.evaluation.rows import (
    ADVERTISER_COLUMNS,
    AUCTION_COLUMNS,
    build_frames,
    candidate_log_proposal,
    prefix_indices,
    tau_grid,
    unit_rows,
)
from app.evaluation.units import UnitData

# --------------------------------------------------------------------------------------------
# expectation
# --------------------------------------------------------------------------------------------


def test_expectation_is_the_allocation_weighted_mean() -> None:
    assert em.expectation([0.25, 0.75], [4.0, 8.0]) == pytest.approx(7.0)


def test_expectation_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        em.expectation([0.5, 0.5], [1.0, 2.0, 3.0])


# --------------------------------------------------------------------------------------------
# counterfactuals, reward gain and utility gain
# --------------------------------------------------------------------------------------------


def test_counterfactual_rewards_by_hand() -> None:
    # log π_ref = log q, τ = 1: ℓ = r_1 + r_2. Without advertiser 1 the weights are softmax(r_2).
    rewards = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    zeros = np.zeros(3)
    cf = em.counterfactual_rewards(rewards, zeros, zeros, tau=1.0)
    e = math.e
    assert cf[0] == pytest.approx(1.0 / (2.0 + e**2))  # softmax([0, 2, 0])[0] · 1
    assert cf[1] == pytest.approx(2.0 / (e + 2.0))  # softmax([1, 0, 0])[1] · 2


def test_counterfactual_rewards_use_tau_and_the_importance_weights() -> None:
    # One advertiser: without her ℓ = log π_ref − log q; τ only scales her own term, which is removed.
    rewards = np.array([[3.0, 1.0]])
    log_ref = np.log([0.2, 0.8])
    log_q = np.log([0.5, 0.5])
    for tau in (0.5, 1.0, 4.0):
        cf = em.counterfactual_rewards(rewards, log_ref, log_q, tau)
        assert cf[0] == pytest.approx(0.2 * 3.0 + 0.8 * 1.0)


def test_counterfactual_equals_expected_reward_when_her_reward_is_constant() -> None:
    # A constant reward does not move the allocation: her gain from participating is zero.
    rewards = np.array([[2.0, 2.0, 2.0], [0.3, -1.0, 0.7]])
    log_ref = np.array([-3.0, -2.0, -4.0])
    log_q = np.array([-2.5, -2.5, -3.0])
    outcome = mechanism.run_auction(rewards, log_ref, log_q, 1.0, np.random.default_rng(0))
    cf = em.counterfactual_rewards(rewards, log_ref, log_q, 1.0)
    gain = em.reward_gain(outcome.expected_rewards, cf)
    assert gain[0] == pytest.approx(0.0, abs=1e-12)
    assert gain[1] > 0.0  # the allocation leans towards what advertiser 2 likes


def test_approximate_counterfactual_is_the_mean_over_candidates_not_naming_her() -> None:
    rewards = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    named = np.array([[True, False, False], [True, True, True], [False, False, False]])
    approx = em.approximate_counterfactual_rewards(rewards, named)
    assert approx[0] == pytest.approx(2.5)
    assert math.isnan(approx[1])  # every candidate names her: undefined
    assert approx[2] == pytest.approx(8.0)


def test_approximate_counterfactual_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="same"):
        em.approximate_counterfactual_rewards(np.zeros((2, 3)), np.zeros((2, 2), dtype=bool))


def test_reward_gain_and_utility_gain_are_differences() -> None:
    gain = em.reward_gain([3.0, -1.0], [1.0, 0.5])
    np.testing.assert_allclose(gain, [2.0, -1.5])
    np.testing.assert_allclose(em.utility_gain(gain, [0.5, -2.0]), [1.5, 0.5])


def test_utility_gain_with_offset_and_exact_counterfactual_is_jensen_gap() -> None:
    # With the offset p_i = R_i − U_i, so gain − p_i = U_i − Σ π^{-i} r_i, and Lemma 5.2 + Jensen give ≥ 0.
    rng = np.random.default_rng(11)
    for _ in range(20):
        n, m = 3, 6
        rewards = rng.normal(0.0, 3.0, size=(n, m))
        log_ref = rng.normal(-20.0, 4.0, size=m)
        log_q = rng.normal(-18.0, 4.0, size=m)
        tau = float(rng.uniform(0.3, 3.0))
        outcome = mechanism.run_auction(rewards, log_ref, log_q, tau, np.random.default_rng(1))
        cf = em.counterfactual_rewards(rewards, log_ref, log_q, tau)
        utility = em.utility_gain(em.reward_gain(outcome.expected_rewards, cf), outcome.payments)
        np.testing.assert_allclose(utility, outcome.expected_utilities - cf, atol=1e-9)
        assert (utility >= -1e-9).all()


# --------------------------------------------------------------------------------------------
# naming
# --------------------------------------------------------------------------------------------


def test_names_advertiser_is_a_case_insensitive_substring_match() -> None:
    assert em.names_advertiser("Try STRUMMASTER for guitars.", "StrumMaster")
    assert em.names_advertiser("the wellness wave app", "Wellness Wave")
    assert not em.names_advertiser("Practice every day.", "Chordify")
    assert not em.names_advertiser("anything", "  ")


def test_names_matrix_is_advertisers_by_candidates() -> None:
    texts = ["Chordify helps", "nothing here", "StrumMaster and chordify"]
    matrix = em.names_matrix(texts, ["StrumMaster", "Chordify"])
    assert matrix.shape == (2, 3)
    np.testing.assert_array_equal(matrix, [[False, False, True], [True, False, True]])


# --------------------------------------------------------------------------------------------
# summaries
# --------------------------------------------------------------------------------------------


def test_centre_by_group_subtracts_the_group_mean() -> None:
    frame = pd.DataFrame({"instance": ["a", "a", "b", "b", "b"], "x": [1.0, 3.0, 10.0, 20.0, 30.0]})
    centred = em.centre_by_group(frame, "x", ["instance"])
    np.testing.assert_allclose(centred.to_numpy(), [-1.0, 1.0, -10.0, 0.0, 10.0])


def test_mean_ci_uses_the_normal_quantile_and_sample_sd() -> None:
    stats = em.mean_ci([1.0, 2.0, 3.0, 4.0, float("nan")])
    assert stats.count == 4
    assert stats.mean == pytest.approx(2.5)
    assert stats.half_width == pytest.approx(1.959963984540054 * math.sqrt(5.0 / 3.0) / 2.0)
    assert stats.low == pytest.approx(2.5 - stats.half_width)
    single = em.mean_ci([7.0])
    assert single.mean == 7.0 and single.count == 1 and math.isnan(single.half_width)
    empty = em.mean_ci([])
    assert empty.count == 0 and math.isnan(empty.mean)


def test_summarise_groups_and_reports_mean_and_ci() -> None:
    frame = pd.DataFrame({"p": ["c", "c", "r", "r"], "M": [1, 1, 1, 1], "v": [1.0, 3.0, 5.0, 5.0]})
    table = em.summarise(frame, ["p", "M"], "v")
    assert list(table.columns) == ["p", "M", "mean", "ci", "low", "high", "count"]
    by = table.set_index("p")
    assert by.loc["c", "mean"] == pytest.approx(2.0)
    assert by.loc["c", "ci"] == pytest.approx(em.Z_95 * math.sqrt(2.0) / math.sqrt(2.0))
    assert by.loc["r", "ci"] == pytest.approx(0.0)
    assert by.loc["r", "count"] == 2


def test_pearson_by_hand() -> None:
    assert em.pearson([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(0.5)
    assert em.pearson([1.0, 2.0, 3.0], [6.0, 4.0, 2.0]) == pytest.approx(-1.0)
    # Pairs with a NaN are dropped; fewer than two pairs or no variance: NaN.
    assert em.pearson([1.0, 2.0, np.nan, 3.0], [2.0, 4.0, 0.0, 6.0]) == pytest.approx(1.0)
    assert math.isnan(em.pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    assert math.isnan(em.pearson([1.0], [2.0]))


def test_linear_fit_by_hand() -> None:
    exact = em.linear_fit([0.0, 1.0, 2.0, 3.0], [1.0, 3.0, 5.0, 7.0])
    assert (exact.slope, exact.intercept, exact.r_squared) == pytest.approx((2.0, 1.0, 1.0))
    # x = 0, 1, 2; y = 0, 2, 1: slope 0.5, intercept 0.5, residuals (−0.5, 1, −0.5): R² = 1 − 1.5/2.
    noisy = em.linear_fit([0.0, 1.0, 2.0], [0.0, 2.0, 1.0])
    assert (noisy.slope, noisy.intercept, noisy.r_squared) == pytest.approx((0.5, 0.5, 0.25))
    assert math.isnan(em.linear_fit([1.0, 1.0], [0.0, 1.0]).slope)


# --------------------------------------------------------------------------------------------
# row building on a hand-made candidate set (no model)
# --------------------------------------------------------------------------------------------


def _instance() -> Instance:
    return Instance(
        id="i1",
        query="q",
        advertisers=[
            {"id": "a", "name": "Alpha", "description": "d"},
            {"id": "b", "name": "Beta", "description": "d"},
        ],
    )


def _unit(proposal: str = "context", seed: int = 0) -> UnitData:
    texts = ["Alpha is good", "plain", "alpha and BETA", "Beta", "plain again", "Alpha"]
    m = len(texts)
    rng = np.random.default_rng(5 + seed)
    log_ref = rng.normal(-30.0, 3.0, size=m)
    sources = ["context"] * 3 + ["reference"] * 3 if proposal == "mixture" else [proposal] * m
    return UnitData(
        instance_id="i1",
        seed=seed,
        proposal=proposal,
        unit_seed=1234 + seed,
        config={"mixture_context_share": 0.5},
        collect_seconds=0.1,
        texts=texts,
        num_tokens=[4] * m,
        finish_reasons=["stop"] * m,
        sources=sources,
        log_ref=log_ref,
        log_advertisers=log_ref + rng.normal(0.0, 2.0, size=(2, m)),
        log_proposal=log_ref + rng.normal(0.0, 1.0, size=m),
        log_context=log_ref + 0.5 if proposal == "mixture" else None,
    )


def test_prefix_indices_take_the_first_m_or_a_prefix_of_each_mixture_pool() -> None:
    np.testing.assert_array_equal(prefix_indices(_unit("context"), 4), [0, 1, 2, 3])
    mixture = _unit("mixture")
    # share 0.5: M=4 → 2 context + 2 reference; M=1 → round(0.5) = 1 context (the service's split).
    np.testing.assert_array_equal(prefix_indices(mixture, 4), [0, 1, 3, 4])
    np.testing.assert_array_equal(prefix_indices(mixture, 6), [0, 1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="outside"):
        prefix_indices(mixture, 7)


def test_mixture_log_proposal_uses_the_prefix_shares() -> None:
    mixture = _unit("mixture")
    indices = prefix_indices(mixture, 4)
    assert mixture.log_context is not None
    expected = np.logaddexp(
        np.log(0.5) + mixture.log_context[indices], np.log(0.5) + mixture.log_ref[indices]
    )
    np.testing.assert_allclose(candidate_log_proposal(mixture, indices), expected)


def test_tau_grid_defaults_to_the_paper_tau_times_multipliers() -> None:
    grid = tau_grid(2, None)
    assert [s.tau for s in grid] == [0.25, 0.5, 1.0, 2.0, 4.0]
    assert [s.primary for s in grid] == [False, False, True, False, False]
    five = tau_grid(5, None)
    assert [s.tau for s in five if s.primary] == [2.5]
    given = tau_grid(4, [3.0, 1.0])
    assert [(s.tau, s.multiplier, s.primary) for s in given] == [(3.0, 1.5, True), (1.0, 0.5, False)]


def test_unit_rows_match_the_mechanism_by_hand() -> None:
    unit = _unit("context")
    instance = _instance()
    auctions, advertisers = unit_rows(unit, instance, [1, 4], [1.0])
    assert len(auctions) == 2 and len(advertisers) == 4
    one, four = auctions
    # M = 1: one candidate takes all; nobody gains, nobody pays.
    assert one["M"] == 1 and one["ess"] == pytest.approx(1.0)
    assert one["total_reward_gain"] == pytest.approx(0.0, abs=1e-12)
    assert one["revenue"] == pytest.approx(0.0, abs=1e-12)
    assert one["fraction_named_chosen"] == pytest.approx(0.5)  # "Alpha is good" names 1 of 2
    # M = 4: recompute with the mechanism directly.
    rewards = unit.log_advertisers[:, :4] - unit.log_ref[:4]
    outcome = mechanism.run_auction(
        rewards, unit.log_ref[:4], unit.log_proposal[:4], 1.0, np.random.default_rng(0)
    )
    target = unit.log_ref[:4] + rewards.sum(axis=0)
    assert four["log_target_expected"] == pytest.approx(float(outcome.probabilities @ target))
    assert four["revenue"] == pytest.approx(outcome.revenue)
    assert four["log_target_chosen"] == pytest.approx(float(target[four["chosen_index"]]))
    # named: [[T, F, T, F], [F, F, T, T]] → per-candidate fractions [.5, 0, 1, .5].
    assert four["fraction_named_candidates"] == pytest.approx(0.5)
    assert four["fraction_named_expected"] == pytest.approx(
        float(outcome.probabilities @ [0.5, 0.0, 1.0, 0.5])
    )
    alpha = next(row for row in advertisers if row["M"] == 4 and row["advertiser_index"] == 0)
    # Alpha is not named by candidates 1 and 3: the approximation averages her reward over them.
    assert alpha["counterfactual_reward_approx"] == pytest.approx(rewards[0, [1, 3]].mean())
    assert alpha["payment"] == pytest.approx(outcome.payments[0])
    assert alpha["utility_gain"] == pytest.approx(alpha["reward_gain"] - alpha["payment"])
    assert alpha["utility_gain_without_offset"] == pytest.approx(
        alpha["reward_gain"] - alpha["payment_without_offset"]
    )


def test_unit_rows_are_deterministic_by_seed() -> None:
    first = unit_rows(_unit("context"), _instance(), [2, 4, 6], None)
    second = unit_rows(_unit("context"), _instance(), [2, 4, 6], None)
    assert first == second


def test_build_frames_centres_log_target_per_instance_and_tau() -> None:
    units = [(_unit(p, seed), _instance()) for p in ("context", "reference") for seed in (0, 1)]
    auctions, advertisers = build_frames(units, [1, 2, 4], None)
    assert list(auctions.columns) == AUCTION_COLUMNS
    assert list(advertisers.columns) == ADVERTISER_COLUMNS
    assert len(auctions) == 2 * 2 * 3 * 5 and len(advertisers) == 2 * len(auctions)
    means = auctions.groupby(["instance_id", "tau"])["log_target_chosen_centred"].mean()
    np.testing.assert_allclose(means.to_numpy(), 0.0, atol=1e-9)
    centred = auctions["log_target_expected"] - auctions["log_target_expected_centred"]
    assert centred.groupby(auctions["tau"]).nunique().eq(1).all()  # one offset per (instance, τ)
    claims = paper_claims(auctions, advertisers)
    assert claims and all(c.claim for c in claims)
    assert any(c.verdict != UNTESTED for c in claims)
    assert {c.verdict for c in claims} <= {HOLDS, FAILS, INCONCLUSIVE, UNTESTED}


def test_sign_verdict_needs_the_whole_interval_on_one_side() -> None:
    assert _sign_verdict(em.MeanCI(2.0, 1.0, 10)) == HOLDS
    assert _sign_verdict(em.MeanCI(-2.0, 1.0, 10)) == FAILS
    assert _sign_verdict(em.MeanCI(0.5, 1.0, 10)) == INCONCLUSIVE
    assert _sign_verdict(em.MeanCI(-2.0, 1.0, 10), sign=-1) == HOLDS  # "falls" claims
    assert _sign_verdict(em.MeanCI(float("nan"), float("nan"), 0)) == UNTESTED
