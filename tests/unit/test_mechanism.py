"""Tests of app.mechanism against docs/MECHANISM.md: the formulas, the properties, the draw."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from scipy import optimize, stats

from app.mechanism import (
    AuctionOutcome,
    allocation_probabilities,
    default_tau,
    effective_sample_size,
    expected_utilities,
    log_target_unnormalised,
    log_weights,
    mixture_log_proposal,
    payments_without_offset,
    rewards_from_logprobs,
    run_auction,
    social_welfare,
)

FloatArray = NDArray[np.float64]

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------------------------
# random instances
# --------------------------------------------------------------------------------------------


class Instance:
    def __init__(self, rewards: FloatArray, log_ref: FloatArray, log_proposal: FloatArray, tau: float):
        self.rewards = rewards
        self.log_ref = log_ref
        self.log_proposal = log_proposal
        self.tau = tau

    def __repr__(self) -> str:
        return (
            f"Instance(rewards={self.rewards.tolist()}, log_ref={self.log_ref.tolist()}, "
            f"log_proposal={self.log_proposal.tolist()}, tau={self.tau})"
        )


def _vector(draw: st.DrawFn, size: int, low: float, high: float) -> FloatArray:
    values = draw(st.lists(st.floats(low, high), min_size=size, max_size=size))
    return np.array(values, dtype=np.float64)


@st.composite
def instances(
    draw: st.DrawFn, min_n: int = 0, max_n: int = 4, max_m: int = 12, reward_bound: float = 20.0
) -> Instance:
    # Bounds keep exp() of every plain-Python quantity in range (the reference uses no shifts).
    num_advertisers = draw(st.integers(min_n, max_n))
    num_candidates = draw(st.integers(1, max_m))
    rewards = _vector(draw, num_advertisers * num_candidates, -reward_bound, reward_bound)
    return Instance(
        rewards=rewards.reshape(num_advertisers, num_candidates),
        log_ref=_vector(draw, num_candidates, -30.0, 0.0),
        log_proposal=_vector(draw, num_candidates, -30.0, 0.0),
        tau=draw(st.floats(0.5, 5.0)),
    )


def _outcome(instance: Instance, rewards: FloatArray | None = None) -> AuctionOutcome:
    rewards = instance.rewards if rewards is None else rewards
    return run_auction(
        rewards, instance.log_ref, instance.log_proposal, instance.tau, np.random.default_rng(0)
    )


def _scale(instance: Instance) -> float:
    return 1.0 + float(np.abs(instance.rewards).max(initial=0.0))


# --------------------------------------------------------------------------------------------
# the slow, obviously correct reference: plain Python, the formulas of MECHANISM.md literally
# --------------------------------------------------------------------------------------------


@dataclass
class ReferenceResult:
    log_weights: list[float]
    probabilities: list[float]
    expected_rewards: list[float]
    expected_utilities: list[float]
    payments: list[float]
    payments_without_offset: list[float]
    effective_sample_size: float


def reference_mechanism(
    rewards: list[list[float]], log_ref: list[float], log_proposal: list[float], tau: float
) -> ReferenceResult:
    n, m = len(rewards), len(log_ref)
    ell = [sum(rewards[i][j] / tau for i in range(n)) + log_ref[j] - log_proposal[j] for j in range(m)]
    weights = [math.exp(value) for value in ell]
    total = sum(weights)
    probabilities = [weight / total for weight in weights]
    expected_rewards = [sum(probabilities[j] * rewards[i][j] for j in range(m)) for i in range(n)]
    utilities = []
    for i in range(n):
        # Lemma 5.2: U_i = τ log Σ_j π^{-i}_j exp(r_ij / τ), π^{-i} = the allocation without i.
        weights_without = [math.exp(ell[j] - rewards[i][j] / tau) for j in range(m)]
        total_without = sum(weights_without)
        mean_exp_reward = sum(
            weights_without[j] / total_without * math.exp(rewards[i][j] / tau) for j in range(m)
        )
        utilities.append(tau * math.log(mean_exp_reward))
    return ReferenceResult(
        log_weights=ell,
        probabilities=probabilities,
        expected_rewards=expected_rewards,
        expected_utilities=utilities,
        payments=[expected_rewards[i] - utilities[i] for i in range(n)],
        payments_without_offset=[expected_rewards[i] - tau * math.log(total) for i in range(n)],
        effective_sample_size=1.0 / sum(p * p for p in probabilities),
    )


def reference_mixture(log_components: list[list[float]], shares: list[float]) -> list[float]:
    return [
        math.log(sum(shares[k] * math.exp(log_components[k][j]) for k in range(len(shares))))
        for j in range(len(log_components[0]))
    ]


@FAST
@given(instances())
def test_agrees_with_reference_implementation(instance: Instance) -> None:
    expected = reference_mechanism(
        instance.rewards.tolist(), instance.log_ref.tolist(), instance.log_proposal.tolist(), instance.tau
    )
    outcome = _outcome(instance)
    args = (instance.rewards, instance.log_ref, instance.log_proposal, instance.tau)
    atol = 1e-9 * _scale(instance)
    close = np.testing.assert_allclose

    close(outcome.log_weights, expected.log_weights, rtol=1e-9, atol=atol)
    close(log_weights(*args), expected.log_weights, rtol=1e-9, atol=atol)
    close(outcome.probabilities, expected.probabilities, rtol=1e-9, atol=1e-12)
    close(allocation_probabilities(*args), expected.probabilities, rtol=1e-9, atol=1e-12)
    close(outcome.expected_rewards, expected.expected_rewards, rtol=1e-9, atol=atol)
    close(outcome.expected_utilities, expected.expected_utilities, rtol=1e-9, atol=atol)
    close(expected_utilities(*args), expected.expected_utilities, rtol=1e-9, atol=atol)
    close(outcome.payments, expected.payments, rtol=1e-9, atol=atol)
    close(payments_without_offset(*args), expected.payments_without_offset, rtol=1e-9, atol=atol)
    assert math.isclose(outcome.revenue, sum(expected.payments), rel_tol=1e-9, abs_tol=10 * atol)
    ess = expected.effective_sample_size
    assert math.isclose(outcome.effective_sample_size, ess, rel_tol=1e-9)
    assert math.isclose(effective_sample_size(outcome.probabilities), ess, rel_tol=1e-9)


@FAST
@given(
    st.integers(1, 4).flatmap(
        lambda k: st.tuples(
            st.lists(st.lists(st.floats(-50.0, 0.0), min_size=8, max_size=8), min_size=k, max_size=k),
            st.lists(st.floats(0.01, 1.0), min_size=k, max_size=k),
        )
    )
)
def test_mixture_log_proposal_agrees_with_reference(case: tuple[list[list[float]], list[float]]) -> None:
    log_components, raw_shares = case
    shares = [share / sum(raw_shares) for share in raw_shares]
    np.testing.assert_allclose(
        mixture_log_proposal(np.array(log_components), np.array(shares)),
        reference_mixture(log_components, shares),
        rtol=1e-9,
        atol=1e-9,
    )


def test_mixture_log_proposal_handles_zero_share_and_outside_support() -> None:
    log_context = np.array([-1.0, -np.inf, -3.0])  # top-p context: candidate 1 outside its support
    log_reference = np.array([-2.0, -4.0, -5.0])
    mixture = mixture_log_proposal(np.stack([log_context, log_reference]), np.array([0.25, 0.75]))
    expected = np.log(0.25 * np.exp(log_context) + 0.75 * np.exp(log_reference))
    np.testing.assert_allclose(mixture, expected, rtol=1e-12)
    only_reference = mixture_log_proposal(np.stack([log_context, log_reference]), np.array([0.0, 1.0]))
    np.testing.assert_allclose(only_reference, log_reference, rtol=1e-12)
    with pytest.raises(ValueError, match="zero probability under every component"):
        mixture_log_proposal(np.stack([log_context, log_reference]), np.array([1.0, 0.0]))


# --------------------------------------------------------------------------------------------
# truthfulness (for a fixed candidate set)
# --------------------------------------------------------------------------------------------


def _true_utility_of_report(instance: Instance, advertiser: int) -> Callable[[FloatArray], float]:
    """u(r') = Σ_j π_j(r') r_i(y_j) − p_i(r'): what advertiser i truly gets when she reports r'."""
    true_rewards = instance.rewards[advertiser]

    def utility(report: FloatArray) -> float:
        reports = instance.rewards.copy()
        reports[advertiser] = report
        outcome = _outcome(instance, reports)
        return float(outcome.probabilities @ true_rewards - outcome.payments[advertiser])

    return utility


def _misreports(true_rewards: FloatArray, rng: np.random.Generator) -> list[FloatArray]:
    scale = 1.0 + float(np.abs(true_rewards).max())
    candidates = [
        np.zeros_like(true_rewards),
        -true_rewards,
        true_rewards + 3.0,
        rng.normal(0.0, scale, true_rewards.shape),
        rng.normal(0.0, 5.0 * scale, true_rewards.shape),
        true_rewards + rng.normal(0.0, 0.1, true_rewards.shape),
    ]
    candidates += [factor * true_rewards for factor in (0.0, 0.3, 0.9, 1.1, 2.0, 10.0, -1.0)]
    for j in range(true_rewards.shape[0]):  # all weight on one candidate
        concentrated = np.zeros_like(true_rewards)
        concentrated[j] = 4.0 * scale
        candidates += [concentrated, true_rewards + concentrated, -concentrated]
    return candidates


def _assert_no_gain(truthful: float, misreported: float, scale: float) -> None:
    assert misreported <= truthful + 1e-9 * (abs(truthful) + scale), (truthful, misreported)


@FAST
@given(instances(min_n=1), st.integers(0, 3), st.integers(0, 2**32 - 1))
def test_no_misreport_beats_truth(instance: Instance, advertiser_pick: int, seed: int) -> None:
    advertiser = advertiser_pick % instance.rewards.shape[0]
    utility = _true_utility_of_report(instance, advertiser)
    truthful = utility(instance.rewards[advertiser])
    for report in _misreports(instance.rewards[advertiser], np.random.default_rng(seed)):
        _assert_no_gain(truthful, utility(report), _scale(instance))


@SLOW
@given(instances(min_n=1, max_n=3, max_m=6), st.integers(0, 2**32 - 1))
def test_optimised_misreport_does_not_beat_truth(instance: Instance, seed: int) -> None:
    utility = _true_utility_of_report(instance, 0)
    true_rewards = instance.rewards[0]
    truthful = utility(true_rewards)
    rng = np.random.default_rng(seed)
    starts = [
        true_rewards + rng.normal(0.0, 1.0, true_rewards.shape),
        rng.normal(0.0, 10.0, true_rewards.shape),
    ]
    for start in starts:
        result = optimize.minimize(lambda report: -utility(report), start, method="L-BFGS-B")
        _assert_no_gain(truthful, -float(result.fun), _scale(instance))


# --------------------------------------------------------------------------------------------
# payments: zero reward, positive reward, constant shifts
# --------------------------------------------------------------------------------------------


@FAST
@given(instances(min_n=1), st.integers(0, 3))
def test_zero_reward_pays_nothing_and_gets_nothing(instance: Instance, advertiser_pick: int) -> None:
    advertiser = advertiser_pick % instance.rewards.shape[0]
    rewards = instance.rewards.copy()
    rewards[advertiser] = 0.0
    outcome = _outcome(instance, rewards)
    assert abs(outcome.payments[advertiser]) <= 1e-12 * _scale(instance)
    assert abs(outcome.expected_utilities[advertiser]) <= 1e-12 * _scale(instance)


@FAST
@given(instances(min_n=1), st.integers(0, 3))
def test_non_negative_reward_gives_non_negative_utility(instance: Instance, advertiser_pick: int) -> None:
    advertiser = advertiser_pick % instance.rewards.shape[0]
    rewards = instance.rewards.copy()
    rewards[advertiser] = np.abs(rewards[advertiser])
    utility = _outcome(instance, rewards).expected_utilities[advertiser]
    assert utility >= -1e-12 * _scale(instance)
    # U_i = τ log E_{π^{-i}} exp(r_i/τ) lies between her smallest and largest reward.
    assert rewards[advertiser].min() - 1e-9 * _scale(instance) <= utility
    assert utility <= rewards[advertiser].max() + 1e-9 * _scale(instance)


@FAST
@given(instances(min_n=1), st.integers(0, 3), st.floats(-100.0, 100.0))
def test_payments_invariant_to_constant_added_to_a_reward(
    instance: Instance, advertiser_pick: int, shift: float
) -> None:
    advertiser = advertiser_pick % instance.rewards.shape[0]
    shifted = instance.rewards.copy()
    shifted[advertiser] += shift
    before, after = _outcome(instance), _outcome(instance, shifted)
    tolerance = 1e-9 * (_scale(instance) + abs(shift))
    np.testing.assert_allclose(after.payments, before.payments, rtol=0.0, atol=tolerance)
    np.testing.assert_allclose(after.probabilities, before.probabilities, rtol=1e-9, atol=1e-12)
    assert math.isclose(
        after.expected_utilities[advertiser], before.expected_utilities[advertiser] + shift, abs_tol=tolerance
    )


def test_payments_hand_computed_example() -> None:
    # Two candidates, one advertiser, q = π_ref, τ = 2: ℓ = r/2, U = 2 log((e^0 + e^1)/2).
    rewards = np.array([[0.0, 2.0]])
    log_ref = np.log(np.array([0.5, 0.5]))
    outcome = run_auction(rewards, log_ref, log_ref, 2.0, np.random.default_rng(0))
    probability = math.e / (1.0 + math.e)
    assert outcome.probabilities[1] == pytest.approx(probability, rel=1e-14)
    assert outcome.expected_utilities[0] == pytest.approx(2.0 * math.log((1.0 + math.e) / 2.0), rel=1e-14)
    assert outcome.payments[0] == pytest.approx(
        2.0 * probability - 2.0 * math.log((1.0 + math.e) / 2.0), rel=1e-13
    )


# --------------------------------------------------------------------------------------------
# convergence to π* on a finite reply space
# --------------------------------------------------------------------------------------------

NUM_REPLIES = 30
NUM_ADVERTISERS = 3


def _toy_reply_space() -> tuple[FloatArray, FloatArray, FloatArray, float]:
    """(log π_ref, rewards (n, K), π*, τ) on K replies."""
    rng = np.random.default_rng(1)
    tau = default_tau(NUM_ADVERTISERS)
    log_ref = rng.normal(size=NUM_REPLIES)
    log_ref -= np.log(np.exp(log_ref).sum())
    rewards = 1.5 * rng.normal(size=(NUM_ADVERTISERS, NUM_REPLIES))
    log_target = log_ref + rewards.sum(axis=0) / tau
    target = np.exp(log_target - log_target.max())
    return log_ref, rewards, target / target.sum(), tau


def _returned_reply_law(proposal: str, num_candidates: int, repetitions: int, seed: int) -> FloatArray:
    """Law of the returned reply over fresh i.i.d. candidate sets, through run_auction.

    Given the candidates, y_J has law Σ_j π_j δ_{y_j} exactly (the draw is tested on its own below),
    so averaging the allocation gives the same law as counting draws, with far less noise.
    """
    log_ref, rewards, target, tau = _toy_reply_space()
    context = target**0.7 / NUM_REPLIES**0.3  # a context-aware proposal: near π*, full support
    context /= context.sum()
    reference = np.exp(log_ref)
    rng = np.random.default_rng(seed)
    if proposal == "context":
        replies, log_q = rng.choice(NUM_REPLIES, (repetitions, num_candidates), p=context), np.log(context)
    elif proposal == "reference":
        replies, log_q = rng.choice(NUM_REPLIES, (repetitions, num_candidates), p=reference), log_ref
    else:  # mixture: half of the draws from each proposal, balance-heuristic log q
        half = num_candidates // 2
        replies = np.concatenate(
            [
                rng.choice(NUM_REPLIES, (repetitions, half), p=context),
                rng.choice(NUM_REPLIES, (repetitions, num_candidates - half), p=reference),
            ],
            axis=1,
        )
        log_q = mixture_log_proposal(np.stack([np.log(context), log_ref]), np.array([0.5, 0.5]))
    law = np.zeros(NUM_REPLIES)
    for candidates in replies:
        outcome = run_auction(rewards[:, candidates], log_ref[candidates], log_q[candidates], tau, rng)
        law += np.bincount(candidates, weights=outcome.probabilities, minlength=NUM_REPLIES)
    return law / repetitions


def _total_variation(law: FloatArray) -> float:
    return 0.5 * float(np.abs(law - _toy_reply_space()[2]).sum())


@pytest.mark.parametrize("seed", [0])
def test_returned_reply_converges_to_optimal_distribution(seed: int) -> None:
    distance = {
        (proposal, size): _total_variation(_returned_reply_law(proposal, size, 2000, seed))
        for proposal in ("context", "reference", "mixture")
        for size in (16, 256)
    }
    for proposal in ("context", "reference", "mixture"):
        assert distance[proposal, 256] <= 0.5 * distance[proposal, 16], distance
    for size in (16, 256):
        assert distance["mixture", size] <= max(distance["context", size], distance["reference", size]), (
            distance
        )
    assert distance["context", 16] < distance["reference", 16], distance  # a proposal near π* helps


# --------------------------------------------------------------------------------------------
# numerical stability
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_candidates", [1, 2, 64, 1024])
@pytest.mark.parametrize("tau", [0.05, 1.0, 5.0])
def test_stable_for_large_rewards_and_many_candidates(num_candidates: int, tau: float) -> None:
    rng = np.random.default_rng(num_candidates)
    rewards = rng.uniform(-1e4, 1e4, size=(10, num_candidates))
    log_ref = rng.uniform(-1e4, 0.0, size=num_candidates)
    log_proposal = rng.uniform(-1e4, 0.0, size=num_candidates)
    outcome = run_auction(rewards, log_ref, log_proposal, tau, rng)
    for array in (outcome.log_weights, outcome.probabilities, outcome.expected_rewards, outcome.payments):
        assert np.isfinite(array).all()
    assert np.isfinite(outcome.expected_utilities).all()
    assert abs(outcome.probabilities.sum() - 1.0) <= 1e-12
    assert (outcome.probabilities >= 0.0).all()
    assert math.isfinite(outcome.revenue)
    assert 1.0 - 1e-12 <= outcome.effective_sample_size <= num_candidates + 1e-9
    assert outcome.probabilities[outcome.chosen_index] > 0.0
    # U_i stays between her smallest and largest reward even here.
    slack = 1e-9 * 1e4
    assert (outcome.expected_utilities >= rewards.min(axis=1) - slack).all()
    assert (outcome.expected_utilities <= rewards.max(axis=1) + slack).all()
    payments = payments_without_offset(rewards, log_ref, log_proposal, tau)
    assert np.isfinite(payments).all()


def test_zero_reward_exact_at_extreme_scale() -> None:
    rng = np.random.default_rng(3)
    rewards = rng.uniform(-1e4, 1e4, size=(4, 1024))
    rewards[2] = 0.0
    log_ref = rng.uniform(-1e3, 0.0, size=1024)
    outcome = run_auction(rewards, log_ref, log_ref, 0.5, rng)
    assert outcome.payments[2] == 0.0
    assert outcome.expected_utilities[2] == 0.0


# --------------------------------------------------------------------------------------------
# the draw
# --------------------------------------------------------------------------------------------

DRAW_REWARDS = np.array([[0.0, 1.0, 2.0, -1.0, -1e4, 0.5], [1.0, 0.0, -0.5, 0.3, 0.0, 0.2]])
DRAW_LOG_REF = np.log(np.array([0.3, 0.2, 0.1, 0.2, 0.1, 0.1]))


def test_draw_is_reproducible_from_the_seed() -> None:
    def chosen(seed: int) -> list[int]:
        rng = np.random.default_rng(seed)
        return [
            run_auction(DRAW_REWARDS, DRAW_LOG_REF, DRAW_LOG_REF, 1.0, rng).chosen_index for _ in range(50)
        ]

    assert chosen(7) == chosen(7)
    assert chosen(7) != chosen(8)


def test_draw_frequencies_match_probabilities() -> None:
    rng = np.random.default_rng(11)
    draws = 20_000
    counts = np.zeros(DRAW_LOG_REF.shape[0])
    probabilities = allocation_probabilities(DRAW_REWARDS, DRAW_LOG_REF, DRAW_LOG_REF, 1.0)
    for _ in range(draws):
        counts[run_auction(DRAW_REWARDS, DRAW_LOG_REF, DRAW_LOG_REF, 1.0, rng).chosen_index] += 1
    assert probabilities[4] == 0.0  # exp(−1e4) underflows: that candidate must never be drawn
    assert counts[4] == 0
    possible = probabilities > 0.0
    result = stats.chisquare(
        counts[possible], draws * probabilities[possible] / probabilities[possible].sum()
    )
    assert result.pvalue > 1e-3, (counts, draws * probabilities)


def test_draw_uses_only_the_given_generator() -> None:
    np.random.seed(0)
    first = run_auction(DRAW_REWARDS, DRAW_LOG_REF, DRAW_LOG_REF, 1.0, np.random.default_rng(5)).chosen_index
    np.random.seed(1)
    second = run_auction(DRAW_REWARDS, DRAW_LOG_REF, DRAW_LOG_REF, 1.0, np.random.default_rng(5)).chosen_index
    assert first == second


# --------------------------------------------------------------------------------------------
# edge cases, helpers, the outcome, validation
# --------------------------------------------------------------------------------------------


def test_no_advertisers() -> None:
    log_ref = np.log(np.array([0.5, 0.25, 0.25]))
    log_proposal = np.log(np.array([0.25, 0.25, 0.5]))
    outcome = run_auction(np.empty((0, 3)), log_ref, log_proposal, 1.0, np.random.default_rng(0))
    assert (
        outcome.payments.shape == outcome.expected_utilities.shape == outcome.expected_rewards.shape == (0,)
    )
    assert outcome.revenue == 0.0
    weights = np.array([2.0, 1.0, 0.5])  # π_ref / q
    np.testing.assert_allclose(outcome.probabilities, weights / weights.sum(), rtol=1e-14)


def test_single_candidate() -> None:
    rewards = np.array([[3.0], [-2.0]])
    outcome = run_auction(rewards, np.array([-4.0]), np.array([-1.0]), 1.0, np.random.default_rng(0))
    assert outcome.chosen_index == 0
    np.testing.assert_array_equal(outcome.probabilities, [1.0])
    np.testing.assert_allclose(outcome.expected_utilities, [3.0, -2.0], rtol=1e-14)
    np.testing.assert_allclose(outcome.payments, [0.0, 0.0], atol=1e-14)
    assert outcome.effective_sample_size == 1.0


def test_outcome_is_consistent_and_read_only() -> None:
    outcome = run_auction(DRAW_REWARDS, DRAW_LOG_REF, DRAW_LOG_REF - 0.1, 2.0, np.random.default_rng(0))
    np.testing.assert_allclose(
        outcome.payments, outcome.expected_rewards - outcome.expected_utilities, rtol=1e-15
    )
    assert outcome.revenue == pytest.approx(outcome.payments.sum(), rel=1e-15)
    assert outcome.tau == 2.0
    assert isinstance(outcome.chosen_index, int)
    with pytest.raises(ValueError, match="read-only"):
        outcome.payments[0] = 0.0
    with pytest.raises(AttributeError):
        outcome.revenue = 0.0  # type: ignore[misc]


def test_inputs_are_not_modified() -> None:
    rewards, log_ref = DRAW_REWARDS.copy(), DRAW_LOG_REF.copy()
    run_auction(rewards, log_ref, log_ref, 1.0, np.random.default_rng(0))
    np.testing.assert_array_equal(rewards, DRAW_REWARDS)
    np.testing.assert_array_equal(log_ref, DRAW_LOG_REF)


@pytest.mark.parametrize(("num_advertisers", "tau"), [(0, 1.0), (1, 1.0), (2, 1.0), (3, 1.5), (10, 5.0)])
def test_default_tau(num_advertisers: int, tau: float) -> None:
    assert default_tau(num_advertisers) == tau


def test_rewards_from_logprobs() -> None:
    log_advertisers = np.array([[-1.0, -2.0, -3.0], [-2.0, -2.0, -2.0]])
    log_ref = np.array([-2.0, -2.0, -2.0])
    rewards = rewards_from_logprobs(log_advertisers, log_ref, np.array([2.0, 1.0]))
    np.testing.assert_allclose(rewards, [[2.0, 0.0, -2.0], [0.0, 0.0, 0.0]])
    assert rewards_from_logprobs(np.empty((0, 3)), log_ref, np.empty(0)).shape == (0, 3)


def test_welfare_and_target() -> None:
    rewards, log_ref, tau = DRAW_REWARDS[:, :4], DRAW_LOG_REF[:4], 2.0
    np.testing.assert_allclose(social_welfare(rewards, log_ref, tau), tau * log_ref + rewards.sum(axis=0))
    np.testing.assert_allclose(
        log_target_unnormalised(rewards, log_ref, tau), log_ref + rewards.sum(axis=0) / tau
    )
    # With log q = 0 the log-weights are the log target itself.
    np.testing.assert_allclose(
        log_weights(rewards, log_ref, np.zeros(4), tau), log_target_unnormalised(rewards, log_ref, tau)
    )


GOOD_REWARDS = np.zeros((2, 3))
GOOD_LOG = np.zeros(3)


@pytest.mark.parametrize(
    ("rewards", "log_ref", "log_proposal", "tau", "message"),
    [
        (np.zeros(3), GOOD_LOG, GOOD_LOG, 1.0, "rewards must be a 2-D array"),
        (np.zeros((2, 0)), np.zeros(0), np.zeros(0), 1.0, "at least one candidate"),
        (GOOD_REWARDS, np.zeros(4), GOOD_LOG, 1.0, "log_ref has 4 entries"),
        (GOOD_REWARDS, GOOD_LOG, np.zeros(2), 1.0, "log_proposal has 2 entries"),
        (GOOD_REWARDS, GOOD_LOG, GOOD_LOG, 0.0, "tau must be finite and > 0"),
        (GOOD_REWARDS, GOOD_LOG, GOOD_LOG, -1.0, "tau must be finite and > 0"),
        (GOOD_REWARDS, GOOD_LOG, GOOD_LOG, math.inf, "tau must be finite and > 0"),
        (GOOD_REWARDS, GOOD_LOG, GOOD_LOG, math.nan, "tau must be finite and > 0"),
        (np.array([[0.0, math.nan, 0.0], [0.0, 0.0, 0.0]]), GOOD_LOG, GOOD_LOG, 1.0, "rewards contains NaN"),
        (GOOD_REWARDS, np.array([0.0, -math.inf, 0.0]), GOOD_LOG, 1.0, "log_ref contains NaN or infinite"),
        (
            GOOD_REWARDS,
            GOOD_LOG,
            np.array([math.inf, 0.0, 0.0]),
            1.0,
            "log_proposal contains NaN or infinite",
        ),
        (np.full((2, 3), 1e308), GOOD_LOG, GOOD_LOG, 1e-10, "overflowed"),
        ([["a", "b", "c"]], GOOD_LOG, GOOD_LOG, 1.0, "rewards must be a numeric array"),
    ],
)
def test_invalid_inputs_raise_clear_errors(
    rewards: object, log_ref: FloatArray, log_proposal: FloatArray, tau: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        run_auction(rewards, log_ref, log_proposal, tau, np.random.default_rng(0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        allocation_probabilities(rewards, log_ref, log_proposal, tau)  # type: ignore[arg-type]


def test_invalid_helper_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="num_advertisers"):
        default_tau(-1)
    with pytest.raises(ValueError, match="value_scales must be finite and > 0"):
        rewards_from_logprobs(np.zeros((2, 3)), GOOD_LOG, np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="value_scales has 1 entries"):
        rewards_from_logprobs(np.zeros((2, 3)), GOOD_LOG, np.array([1.0]))
    with pytest.raises(ValueError, match="shares must sum to 1"):
        mixture_log_proposal(np.zeros((2, 3)), np.array([0.5, 0.6]))
    with pytest.raises(ValueError, match="shares must be finite and >= 0"):
        mixture_log_proposal(np.zeros((2, 3)), np.array([1.5, -0.5]))
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        mixture_log_proposal(np.array([[0.0, math.nan, 0.0]]), np.array([1.0]))
    with pytest.raises(ValueError, match=r"rng must be a numpy\.random\.Generator"):
        run_auction(GOOD_REWARDS, GOOD_LOG, GOOD_LOG, 1.0, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="probabilities must not be empty"):
        effective_sample_size(np.zeros(0))
    with pytest.raises(ValueError, match="probabilities must not be all zero"):
        effective_sample_size(np.zeros(3))
