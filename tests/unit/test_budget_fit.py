"""fit_budgets: an auction lowered into its advertisers' remaining budgets (app/campaigns/budget_fit.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import mechanism
from app.campaigns.budget_fit import BudgetFit, charge_micro, fit_budgets
from app.ledger.events import to_micro_units


def _instance(seed: int, n: int, m: int, spread: float = 3.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    log_ref = rng.normal(-40.0, 5.0, m)
    return rng.normal(0.0, spread, (n, m)), log_ref, log_ref + rng.normal(0.0, 2.0, m)


def _unbound_charges(rewards: np.ndarray, log_ref: np.ndarray, log_q: np.ndarray, tau: float) -> list[int]:
    return [charge_micro(p) for p in mechanism.allocation_and_payments(rewards, log_ref, log_q, tau)[1]]


def _same_outcome(a: mechanism.AuctionOutcome, b: mechanism.AuctionOutcome) -> bool:
    return (
        a.chosen_index == b.chosen_index
        and np.array_equal(a.payments, b.payments)
        and np.array_equal(a.probabilities, b.probabilities)
        and np.array_equal(a.expected_rewards, b.expected_rewards)
    )


@st.composite
def _budgeted_auctions(
    draw: st.DrawFn,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, list[int | None], int]:
    n = draw(st.integers(1, 5))
    m = draw(st.integers(1, 24))
    rewards, log_ref, log_q = _instance(
        draw(st.integers(0, 2**32 - 1)), n, m, draw(st.sampled_from([0.5, 3.0, 12.0]))
    )
    tau = mechanism.default_tau(n)
    charges = _unbound_charges(rewards, log_ref, log_q, tau)
    fractions = draw(
        st.lists(st.sampled_from([None, 0.0, 0.01, 0.3, 0.7, 0.999, 1.0, 2.0]), min_size=n, max_size=n)
    )
    remaining = [None if f is None else int(c * f) for c, f in zip(charges, fractions, strict=True)]
    return rewards, log_ref, log_q, tau, remaining, draw(st.integers(0, 2**63 - 1))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_budgeted_auctions(), max_rounds=st.sampled_from([0, 1, 8]))
def test_the_fit_never_charges_past_a_remaining_budget(
    case: tuple[np.ndarray, np.ndarray, np.ndarray, float, list[int | None], int], max_rounds: int
) -> None:
    """Every charge (whole micro-units, as billed) ≤ its remaining budget; α ∈ [0, 1] and only ever
    lowered round after round; a dropped advertiser (α = 0) pays exactly 0.0; the outcome is the
    mechanism run on the α-scaled rows (α applied to rewards and payments alike); the seed replays it."""
    rewards, log_ref, log_q, tau, remaining, seed = case
    fit = fit_budgets(rewards, log_ref, log_q, tau, remaining, seed, max_rounds=max_rounds)
    for charge, limit in zip(fit.payments_micro, remaining, strict=True):
        assert limit is None or 0 <= charge <= limit
    assert fit.payments_micro == [charge_micro(p) for p in fit.outcome.payments]
    assert ((fit.alphas >= 0.0) & (fit.alphas <= 1.0)).all()
    assert fit.rounds <= max_rounds and len(fit.alpha_rounds) == fit.rounds
    previous = np.ones(len(remaining))
    for alphas in [*fit.alpha_rounds, tuple(fit.alphas)]:
        assert (np.asarray(alphas) <= previous).all()
        previous = np.asarray(alphas)
    for index in fit.dropped:
        assert (
            fit.alphas[index] == 0.0 and fit.outcome.payments[index] == 0.0 and fit.payments_micro[index] == 0
        )
    assert fit.lowered == [i for i, a in enumerate(fit.alphas) if 0.0 < a < 1.0]
    for index, limit in enumerate(remaining):  # only a budget-bound advertiser is ever lowered
        assert limit is not None or fit.alphas[index] == 1.0
    scaled = rewards * fit.alphas[:, None]
    scaled[fit.alphas == 0.0] = 0.0
    assert _same_outcome(
        fit.outcome, mechanism.run_auction(scaled, log_ref, log_q, tau, np.random.default_rng(seed))
    )
    assert _same_outcome(
        fit.outcome, fit_budgets(rewards, log_ref, log_q, tau, remaining, seed, max_rounds).outcome
    )


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 5), m=st.integers(1, 32), slack=st.integers(0, 10**6))
def test_a_non_binding_auction_is_unchanged_bit_for_bit(seed: int, n: int, m: int, slack: int) -> None:
    """When every charge fits (or there is no limit), the outcome is run_auction on the rows as given,
    with default_rng(seed): every array identical, α = 1, no round."""
    rewards, log_ref, log_q = _instance(seed, n, m)
    tau = mechanism.default_tau(n)
    charges = _unbound_charges(rewards, log_ref, log_q, tau)
    remaining: list[int | None] = [c + slack if i % 2 == 0 else None for i, c in enumerate(charges)]
    fit = fit_budgets(rewards, log_ref, log_q, tau, remaining, seed)
    plain = mechanism.run_auction(rewards, log_ref, log_q, tau, np.random.default_rng(seed))
    assert _same_outcome(fit.outcome, plain) and np.array_equal(fit.outcome.log_weights, plain.log_weights)
    assert fit.rounds == 0 and fit.lowered == [] and fit.dropped == [] and (fit.alphas == 1.0).all()


@pytest.mark.parametrize("seed", range(20))
def test_one_bound_advertiser_is_charged_exactly_her_remaining_budget(seed: int) -> None:
    """The stopping rule is exact in micro-units: with one budget binding, her charge is the whole
    remaining budget, not a micro-unit less; the others keep α = 1."""
    rewards, log_ref, log_q = _instance(seed, 3, 16)
    tau = mechanism.default_tau(3)
    charges = _unbound_charges(rewards, log_ref, log_q, tau)
    remaining: list[int | None] = [None, charges[1] // 3, None]
    fit = fit_budgets(rewards, log_ref, log_q, tau, remaining, seed)
    assert fit.payments_micro[1] == remaining[1]
    assert fit.lowered == [1] and fit.rounds == 1 and fit.alphas[0] == fit.alphas[2] == 1.0


def test_when_the_rounds_run_out_the_unfitted_are_dropped_and_pay_nothing() -> None:
    """max_rounds=0: every bound advertiser is dropped (α = 0, payment exactly 0.0), the rest unchanged."""
    rewards, log_ref, log_q = _instance(7, 3, 16)
    charges = _unbound_charges(rewards, log_ref, log_q, 1.5)
    fit = fit_budgets(rewards, log_ref, log_q, 1.5, [charges[0] - 1, None, 0], 3, max_rounds=0)
    assert fit.dropped == [0, 2] and fit.outcome.payments[0] == 0.0 and fit.outcome.payments[2] == 0.0
    assert fit.payments_micro[0] == fit.payments_micro[2] == 0 and fit.alphas[1] == 1.0


def test_a_generator_factory_replays_like_a_seed() -> None:
    rewards, log_ref, log_q = _instance(3, 2, 16)
    charges = _unbound_charges(rewards, log_ref, log_q, 1.0)
    by_seed = fit_budgets(rewards, log_ref, log_q, 1.0, [charges[0] // 2, charges[1] // 2], 11)
    by_factory = fit_budgets(
        rewards, log_ref, log_q, 1.0, [charges[0] // 2, charges[1] // 2], lambda: np.random.default_rng(11)
    )
    assert isinstance(by_seed, BudgetFit) and _same_outcome(by_seed.outcome, by_factory.outcome)


@pytest.mark.parametrize(
    ("remaining", "seed", "max_rounds", "named"),
    [
        ([1], 0, 8, "remaining_micro has 1 entries"),
        ([-1, None], 0, 8, r"remaining_micro\[0\]"),
        ([True, None], 0, 8, r"remaining_micro\[0\]"),
        ([None, 2.5], 0, 8, r"remaining_micro\[1\]"),
        ([None, None], -1, 8, "rng_seed_or_factory"),
        ([None, None], True, 8, "rng_seed_or_factory"),
        ([None, None], "x", 8, "rng_seed_or_factory"),
        ([None, None], 0, -1, "max_rounds"),
    ],
)
def test_bad_arguments_are_named(remaining: list, seed: object, max_rounds: int, named: str) -> None:
    rewards, log_ref, log_q = _instance(0, 2, 4)
    with pytest.raises(ValueError, match=named):
        fit_budgets(rewards, log_ref, log_q, 1.0, remaining, seed, max_rounds=max_rounds)  # type: ignore[arg-type]


@settings(max_examples=2000, deadline=None)
@given(
    payment=st.one_of(
        st.floats(-1.0, 2e4, allow_nan=False),
        st.integers(-(10**6), 10**10).map(lambda k: k / 1e6),
        st.integers(-(10**6), 10**10).map(lambda k: (k + 0.5) / 1e6),
    )
)
def test_the_charge_is_the_billed_rounding(payment: float) -> None:
    """charge_micro (with its fast path) == max(0, to_micro_units(p)): the fit checks exactly the
    integer the ledger bills, half-integers included."""
    assert charge_micro(payment) == max(0, to_micro_units(payment))
