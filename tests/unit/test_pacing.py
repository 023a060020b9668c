"""Pacing (app/campaigns/pacing.py): the multiplier, the update, the target, truthfulness with α frozen,
and the day-of-traffic simulation (bench/pacing.py) on a shorter day."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import mechanism
from app.campaigns.pacing import (
    DEFAULT_EPSILON,
    DEFAULT_MU_MAX,
    MIN_TARGET_MICRO,
    TrafficCurve,
    day_budget,
    day_fraction,
    pacing_multiplier,
    pacing_step,
    pacing_target,
    pacing_update,
)
from app.ledger.budget import BudgetLimits, BudgetState, PacingStep
from bench import pacing as day_simulation


def _state(spent: int = 0, auctions: int = 0, mu: float = 0.0, reserved: int = 0) -> BudgetState:
    return BudgetState("2026-12-07", spent, reserved, spent, reserved, auctions, auctions, auctions, mu)


def test_the_multiplier_is_one_over_one_plus_mu() -> None:
    assert pacing_multiplier(0.0) == 1.0 and pacing_multiplier(1.0) == 0.5 and pacing_multiplier(9.0) == 0.1
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="mu"):
            pacing_multiplier(bad)


@pytest.mark.parametrize(
    ("mu", "rho", "spent", "expected"),
    [
        (0.5, 1000.0, 3000, 0.9),  # 0.5 − 0.2·(1000 − 3000)/1000 = 0.5 + 0.4
        (0.5, 1000.0, 0, 0.3),  # below target: at most ε lower
        (0.5, 1000.0, 1000, 0.5),  # on target: unchanged
        (0.1, 1000.0, 0, 0.0),  # clipped at 0
        (8.9, 1000.0, 10_000, 9.0),  # clipped at μ̄
    ],
)
def test_pacing_update_is_the_hand_computed_step(mu: float, rho: float, spent: int, expected: float) -> None:
    """μ ← clip(μ − ε·(ρ − z)/ρ, 0, μ̄) with ε = 0.2, μ̄ = 9, computed left to right as the Lua script does."""
    step = PacingStep(target_micro=rho, epsilon=0.2, mu_max=9.0)
    assert pacing_update(mu, step, spent) == pytest.approx(expected, abs=1e-15)
    assert pacing_update(mu, step, spent) == min(max(mu - 0.2 * (rho - spent) / rho, 0.0), 9.0)


@pytest.mark.parametrize(
    ("step", "mu", "spent", "named"),
    [
        (PacingStep(0.0, 0.2, 9.0), 0.0, 0, "target_micro"),
        (PacingStep(1.0, 0.0, 9.0), 0.0, 0, "epsilon"),
        (PacingStep(1.0, 0.2, 9.0), -1.0, 0, "mu"),
        (PacingStep(1.0, 0.2, 9.0), 0.0, -1, "spent_micro"),
    ],
)
def test_a_bad_pacing_step_is_named(step: PacingStep, mu: float, spent: int, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        pacing_update(mu, step, spent)


def test_the_traffic_curve_is_a_cumulative_share() -> None:
    flat = TrafficCurve()
    assert flat.cumulative(0.0) == 0.0 and flat.cumulative(1.0) == 1.0
    assert flat.cumulative(0.3) == pytest.approx(0.3) and flat.cumulative(-1.0) == 0.0
    day = TrafficCurve((1.0, 3.0))  # two slots: a quarter of the traffic in the first half of the day
    assert day.cumulative(0.5) == pytest.approx(0.25) and day.cumulative(0.75) == pytest.approx(0.625)
    grid = [TrafficCurve(day_simulation.DAY_CURVE).cumulative(t) for t in np.linspace(0, 1, 97)]
    assert all(a <= b for a, b in itertools.pairwise(grid)) and grid[-1] == 1.0
    for bad in ((), (0.0, 0.0), (1.0, -1.0), (math.nan,)):
        with pytest.raises(ValueError, match=r"traffic\.hourly"):
            TrafficCurve(bad)


def test_pacing_target_is_the_hand_computed_spend_rate() -> None:
    """ρ = (B·F(t+h) − spent − reserved) / (n_today·(F(t+h) − F(t))/F(t)), at least one auction and
    MIN_TARGET_MICRO: flat day, B = 24 000, t = 1/4, h = 1/96."""
    limits, flat, h = BudgetLimits(24_000, None), TrafficCurve(), 1.0 / 96.0
    wanted = 24_000 * (0.25 + h) - 1_000
    assert pacing_target(_state(1_000, 10), limits, 0.25, flat, h) == pytest.approx(wanted)  # 10·h/0.25 < 1
    expected = 1_000 * h / 0.25
    assert pacing_target(_state(1_000, 1_000), limits, 0.25, flat, h) == pytest.approx(wanted / expected)
    assert pacing_target(_state(900, 1_000, reserved=100), limits, 0.25, flat, h) == pytest.approx(
        wanted / expected
    )
    assert pacing_target(_state(7_000, 1_000), limits, 0.25, flat, h) == MIN_TARGET_MICRO  # ahead: brake


def test_only_a_daily_budget_is_paced_and_the_total_caps_the_day() -> None:
    with pytest.raises(ValueError, match="daily budget"):
        pacing_target(_state(), BudgetLimits(None, 10_000), 0.5, TrafficCurve())
    assert pacing_step(_state(), BudgetLimits(None, 10_000), 0.5, TrafficCurve()) is None
    step = pacing_step(_state(), BudgetLimits(1_000, None), 0.5, TrafficCurve())
    assert step is not None and (step.epsilon, step.mu_max) == (DEFAULT_EPSILON, DEFAULT_MU_MAX)
    assert day_budget(_state(spent=400), BudgetLimits(1_000, 1_200)) == 1_000
    state = BudgetState("d", 100, 0, 1_100, 0, 1, 5, 5, 0.0)  # 1 000 spent on earlier days
    assert day_budget(state, BudgetLimits(1_000, 1_200)) == 200  # 100 today + the 100 the total leaves
    assert day_fraction(1_500, 1_000, 3_000) == 0.25 and day_fraction(5_000, 1_000, 3_000) == 1.0


# ---------------------------------------------------------------------------- truthfulness, α fixed
REPORTS = np.geomspace(0.1, 10.0, 241)


def _random_instance(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(log π_i − log π_ref (n, M), log_ref, log_q, the others' value scales)."""
    rng = np.random.default_rng(seed)
    log_ref = rng.normal(-40.0, 5.0, 16)
    deltas = rng.normal(0.0, 1.5, (n, 16))
    return deltas, log_ref, log_ref + rng.normal(0.0, 2.0, 16), rng.uniform(0.5, 2.0, n)


def _recorded_instance(index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A recorded SmolLM2 candidate set (docs/results/evaluate/cache), both value scales 1."""
    deltas, log_ref, log_q = day_simulation.load_candidate_sets()[index]
    return deltas, log_ref, log_q, np.ones(deltas.shape[0])


def _utilities(
    alpha: float, true_scale: float, reports: np.ndarray, instance: tuple[np.ndarray, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """(α·r_i − p_i, r_i − p_i) in expectation over the allocation, for advertiser 0 reporting s'."""
    deltas, log_ref, log_q, others = instance
    tau = mechanism.default_tau(deltas.shape[0])
    adjusted, raw = [], []
    for report in reports:
        rows = deltas * others[:, None]
        rows[0] = alpha * report * deltas[0]  # the platform applies α to her reported scale
        probabilities, payments = mechanism.allocation_and_payments(rows, log_ref, log_q, tau)
        reward = true_scale * float(deltas[0] @ probabilities)
        adjusted.append(alpha * reward - payments[0])
        raw.append(reward - payments[0])
    return np.asarray(adjusted), np.asarray(raw)


INSTANCES = [("random", 0, 2), ("random", 1, 2), ("random", 2, 3), ("random", 3, 4), ("recorded", 0, 2),
             ("recorded", 17, 2), ("recorded", 33, 2)]  # fmt: skip


@pytest.mark.parametrize("alpha", [0.25, 0.5, 0.8])
@pytest.mark.parametrize(("kind", "index", "n"), INSTANCES)
def test_with_alpha_frozen_the_true_scale_maximises_the_budget_adjusted_utility(
    alpha: float, kind: str, index: int, n: int
) -> None:
    """Frozen α: α·r_i − p_i is maximised by reporting the true s_i (over a grid of misreports), while
    r_i − p_i is maximised by s_i/α — the platform's α makes the report truthful for her Lagrangian."""
    true_scale = 1.3
    reports = np.sort(np.concatenate([REPORTS, [true_scale, true_scale / alpha]]))
    instance = _random_instance(index, n) if kind == "random" else _recorded_instance(index)
    adjusted, raw = _utilities(alpha, true_scale, reports, instance)
    truthful = int(np.flatnonzero(reports == true_scale)[0])
    shaded = int(np.flatnonzero(reports == true_scale / alpha)[0])
    assert adjusted[truthful] >= adjusted.max() - 1e-12
    assert raw[shaded] >= raw.max() - 1e-12
    assert raw[shaded] > raw[truthful] + 1e-9  # for r_i − p_i the truth is not best when α < 1


# ---------------------------------------------------------------------------- the day simulation
def test_a_day_of_paced_traffic_tracks_its_target_and_never_passes_a_budget() -> None:
    """Through the real mechanism and fit_budgets on the recorded candidate sets, with a 3× burst:
    cumulative spend within ±10% of B·F(t) at the end of every hour, never over budget, the budget
    nearly spent by the end of the day."""
    result = day_simulation.simulate(day_simulation.DayConfig(auctions_per_day=12_000))
    assert result.max_deviation() <= 0.10
    assert result.over_budget() == 0
    assert all(0.95 * b <= s <= b for s, b in zip(result.spent[-1], result.budgets, strict=True))


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_the_day_simulation_replays_by_seed(seed: int) -> None:
    config = day_simulation.DayConfig(auctions_per_day=300, seed=seed)
    first, second = day_simulation.simulate(config), day_simulation.simulate(config)
    assert first.spent == second.spent and first.budgets == second.budgets
    assert all(row[k] <= b for row in first.spent for k, b in enumerate(first.budgets))
