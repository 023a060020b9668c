"""The mechanisms of `mosaic compare` (app.comparison): hand-made instances with known answers, VCG
payments as externalities, and the incentive search — finding the first-price gap that exists, and no
gap for MOSAIC (with and without the offset) or VCG, which are DSIC for a fixed candidate set."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate

from app import mechanism
from app.comparison import mechanisms as mech
from app.comparison.incentives import incentive_gap, max_incentive_gap, true_utility
from app.comparison.mechanisms import CandidateSet


def _set(
    rewards: list[list[float]],
    log_ref: list[float],
    log_proposal: list[float] | None = None,
    tau: float = 1.0,
    named: list[list[bool]] | None = None,
    num_tokens: list[int] | None = None,
) -> CandidateSet:
    r = np.asarray(rewards, dtype=np.float64)
    m = r.shape[1]
    return CandidateSet(
        rewards=r,
        log_ref=np.asarray(log_ref, dtype=np.float64),
        log_proposal=np.asarray(log_ref if log_proposal is None else log_proposal, dtype=np.float64),
        tau=tau,
        num_tokens=np.asarray(num_tokens or [1] * m, dtype=np.int64),
        named=np.asarray(named if named is not None else np.ones_like(r, dtype=bool), dtype=bool),
    )


@st.composite
def candidate_sets(draw: st.DrawFn, max_n: int = 3, max_m: int = 6) -> CandidateSet:
    n = draw(st.integers(1, max_n))
    m = draw(st.integers(1, max_m))
    floats = st.floats(-5.0, 5.0, allow_nan=False)
    rewards = [[draw(floats) for _ in range(m)] for _ in range(n)]
    log_ref = [draw(st.floats(-30.0, -0.1)) for _ in range(m)]
    log_proposal = [draw(st.floats(-30.0, -0.1)) for _ in range(m)]
    named = [[draw(st.booleans()) for _ in range(m)] for _ in range(n)]
    tau = draw(st.sampled_from([0.5, 1.0, 2.0]))
    return _set(rewards, log_ref, log_proposal, tau, named, [draw(st.integers(1, 40)) for _ in range(m)])


def test_mosaic_is_the_service_mechanism_bit_for_bit() -> None:
    candidates = _set([[0.3, -1.0, 2.0], [1.0, 0.5, -0.2]], [-3.0, -5.0, -4.0], [-2.5, -6.0, -3.0], tau=0.7)
    outcome = mech.mosaic(candidates)
    served = mechanism.run_auction(
        candidates.rewards, candidates.log_ref, candidates.log_proposal, 0.7, np.random.default_rng(1)
    )
    assert np.array_equal(outcome.probabilities, served.probabilities)
    assert np.array_equal(outcome.payments, served.payments)


def test_no_ads_is_uniform_under_the_reference_proposal_and_free() -> None:
    candidates = _set([[5.0, -1.0, 2.0]], [-3.0, -5.0, -4.0])
    outcome = mech.no_ads(candidates)
    assert np.allclose(outcome.probabilities, 1 / 3) and not outcome.payments.any()
    skewed = mech.no_ads(_set([[5.0, -1.0]], [-1.0, -2.0], [-2.0, -2.0]))  # π_ref/q = e^1 : e^0
    assert skewed.probabilities == pytest.approx([math.e / (1 + math.e), 1 / (1 + math.e)], abs=1e-15)


def test_vcg_hand_computed() -> None:
    # W = Σr + log_ref: [1+2-3, 3+0-2, 0+4-6] = [0, 1, -2] → j* = 1.
    candidates = _set([[1.0, 3.0, 0.0], [2.0, 0.0, 4.0]], [-3.0, -2.0, -6.0])
    outcome = mech.best_of_m_vcg(candidates)
    assert outcome.probabilities.tolist() == [0.0, 1.0, 0.0]
    # W^{-1} = [-1, -2, -2]: max −1, at j* −2 → p_1 = 1.  W^{-2} = [-2, 1, -6]: max 1 = at j* → p_2 = 0.
    assert outcome.payments.tolist() == [1.0, 0.0]
    first_price = mech.first_price_best_of_m(candidates)
    assert first_price.probabilities.tolist() == [0.0, 1.0, 0.0]
    assert first_price.payments.tolist() == [3.0, 0.0]


@settings(max_examples=150, deadline=None)
@given(candidate_sets())
def test_vcg_payments_are_externalities(candidates: CandidateSet) -> None:
    """p_i = (others' best welfare without i) − (others' welfare at the chosen reply), and ≥ 0."""
    outcome = mech.best_of_m_vcg(candidates)
    chosen = int(np.argmax(outcome.probabilities))
    assert chosen == int(np.argmax(candidates.welfare))
    for i in range(candidates.rewards.shape[0]):
        others = [
            sum(candidates.rewards[k, j] for k in range(candidates.rewards.shape[0]) if k != i)
            + candidates.tau * candidates.log_ref[j]
            for j in range(candidates.log_ref.shape[0])
        ]
        assert outcome.payments[i] == pytest.approx(max(others) - others[chosen], abs=1e-9)
        assert outcome.payments[i] >= -1e-12


def test_segment_auction_hand_computed_against_myerson_integral() -> None:
    # Advertiser 0 named only in candidate 0, advertiser 1 only in candidate 2.
    candidates = _set(
        [[2.0, 9.0, 0.0], [0.0, 9.0, 1.0]],
        [-2.0, -1.0, -3.0],
        named=[[True, False, False], [False, False, True]],
        num_tokens=[2, 1, 3],
    )
    outcome = mech.segment_auction(candidates)
    q = np.exp([-2.0 / 2, -3.0 / 3])  # per-token probability of each ad
    strength = np.array([2.0, 1.0]) * q
    shares = strength / strength.sum()
    assert outcome.probabilities == pytest.approx([shares[0], 0.0, shares[1]], abs=1e-15)
    for i, bid in enumerate((2.0, 1.0)):
        others = strength[1 - i]

        def allocation(z: float, i: int = i, others: float = others) -> float:
            return z * q[i] / (z * q[i] + others)

        integral = integrate.quad(allocation, 0.0, bid)[0]
        assert outcome.payments[i] == pytest.approx(bid * shares[i] - integral, abs=1e-10)
    alone = mech.segment_auction(_set([[2.0, 0.0]], [-1.0, -1.0], named=[[True, False]]))
    assert alone.probabilities.tolist() == [1.0, 0.0] and alone.payments.tolist() == [0.0]


def test_segment_auction_without_a_positive_bid_is_the_no_ads_reply() -> None:
    candidates = _set([[-1.0, 2.0]], [-1.0, -2.0], named=[[True, False]])
    outcome = mech.segment_auction(candidates)
    assert np.array_equal(outcome.probabilities, mech.no_ads(candidates).probabilities)
    assert not outcome.payments.any()


def _scale(candidates: CandidateSet) -> float:
    return (
        1.0
        + float(np.abs(candidates.rewards).max())
        + candidates.tau * float(np.abs(candidates.log_ref).max())
    )


@settings(max_examples=40, deadline=None)
@given(candidate_sets(max_n=2, max_m=5), st.integers(0, 2**32 - 1))
def test_dsic_mechanisms_show_no_incentive_gap(candidates: CandidateSet, seed: int) -> None:
    """MOSAIC with and without the offset, and VCG, are DSIC for a fixed candidate set: the search finds
    nothing (≤ 1e-9 relative to the auction's scale)."""
    for resolve in (mech.mosaic, mech.mosaic_without_offset, mech.best_of_m_vcg):
        gap = max_incentive_gap(resolve, candidates, np.random.default_rng(seed), optimise_evaluations=100)
        assert gap <= 1e-9 * _scale(candidates), (resolve.__name__, gap)


def test_the_search_finds_the_first_price_gap() -> None:
    """First-price: the winner shades her report (the allocation stays) and pays less."""
    candidates = _set([[3.0, 0.5, 0.0], [0.0, 0.2, 0.1]], [-2.0, -2.0, -2.5])
    rng = np.random.default_rng(0)
    gap = incentive_gap(mech.first_price_best_of_m, candidates, 0, rng)
    # Truthful: candidate 0 wins, she pays her 3.0, utility 0. Shifting every report down keeps
    # candidate 0 (the others' terms do not move) and makes her bid ≤ 0: she pays 0, utility 3.
    assert gap == pytest.approx(3.0, abs=1e-12)
    assert max_incentive_gap(mech.mosaic, candidates, rng) <= 1e-12


def test_true_utility_uses_true_rewards_not_the_report() -> None:
    candidates = _set([[1.0, 0.0]], [-1.0, -1.0])
    report = np.array([0.0, 10.0])  # pushes the allocation to candidate 1, worth 0 to her
    utility = true_utility(mech.best_of_m_vcg, candidates, 0, report)
    assert utility == 0.0  # chosen candidate 1 (true reward 0), no competitor: pays 0
