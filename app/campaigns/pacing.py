"""Adaptive pacing of a daily budget (Balseiro–Gur): α = 1/(1+μ) on the value scale, μ updated per auction.

Pure (standard library and app.ledger.budget's dataclasses). Before an auction the campaign's
α = `pacing_multiplier(μ)` is fixed from spend before it; after the auction is billed with charge z,
μ ← clip(μ − ε·(ρ − z)/ρ, 0, μ̄) (`pacing_update`, the same expression as the budget script) with
ρ = `pacing_target`: the spend per auction that brings cumulative spend onto B·F(t + h), the day's
budget along the traffic curve one horizon ahead, spread over the auctions expected in that horizon
at the rate observed today. Spending ahead of the target makes ρ tiny and raises μ at once; a burst
of auctions spreads the same money over more of them. See docs/DESIGN.md § The ad-server layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from app.ledger.budget import BudgetLimits, BudgetState, PacingStep

__all__ = [
    "DEFAULT_EPSILON",
    "DEFAULT_HORIZON",
    "DEFAULT_MU_MAX",
    "MIN_TARGET_MICRO",
    "TrafficCurve",
    "day_budget",
    "day_fraction",
    "pacing_multiplier",
    "pacing_step",
    "pacing_target",
    "pacing_update",
]

# ε: one auction below target lowers μ by at most ε (the normalised error (ρ − z)/ρ is ≤ 1), one
# above raises it by ε·(z/ρ − 1) (unbounded, then clipped): slow to speed up, quick to brake. 0.2 moves
# μ by one unit in about five auctions (a new campaign finds its level within its first hour's
# auctions) while one heavy-tailed charge (z ≈ 20ρ seen in the recorded sets) moves it by ~4, undone
# in ~20 auctions; bench/pacing.py: 0.05 and 0.1 track the day curve worse (0.14, 0.12 vs 0.05).
DEFAULT_EPSILON = 0.2
# μ̄: α ≥ 1/(1 + μ̄) = 0.1; a payment scales about as α², so pacing alone can slow spend to ~1% of
# unpaced — below that the hard budget (fit_budgets) still holds. A larger μ̄ recovers slower
# after a burst (μ falls ≤ ε per auction).
DEFAULT_MU_MAX = 9.0
# h: the target is where cumulative spend should be a quarter of an hour of the day ahead: a
# deficit or a burst's excess is corrected within 15 minutes (one hour ahead: 0.10–0.14 off by the
# first hour and 0.06 after the burst in bench/pacing.py; 5 minutes: too few auctions to average).
DEFAULT_HORIZON = 1.0 / 96.0
# ρ never below one micro-unit (the smallest charge): the update divides by ρ.
MIN_TARGET_MICRO = 1.0


def _flat() -> tuple[float, ...]:
    return (1.0,) * 24


@dataclass(frozen=True)
class TrafficCurve:
    """The day's expected share of traffic per slot (24 hours by default, flat), normalised to sum 1.

    F(t) = `cumulative(t)`, t the fraction of the day in [0, 1]: the share expected before t, with a
    constant rate inside each slot.
    """

    hourly: Sequence[float] = field(default_factory=_flat)

    def __post_init__(self) -> None:
        shares = [float(x) for x in self.hourly]
        if not shares or not all(math.isfinite(x) and x >= 0.0 for x in shares) or sum(shares) <= 0.0:
            raise ValueError("traffic.hourly must be non-empty, finite, >= 0 and not all 0")
        total = sum(shares)
        normalised = tuple(x / total for x in shares)
        cumulative = [0.0]
        for share in normalised:
            cumulative.append(cumulative[-1] + share)
        cumulative[-1] = 1.0
        object.__setattr__(self, "hourly", normalised)
        object.__setattr__(self, "_cumulative", tuple(cumulative))

    def cumulative(self, day_fraction: float) -> float:
        """F(t): the share of the day's traffic expected before ``day_fraction`` (clipped to [0, 1])."""
        t = min(max(float(day_fraction), 0.0), 1.0)
        if t == 1.0:
            return 1.0  # exactly: the day's last target is the whole budget
        slots = len(self.hourly)
        slot = min(int(t * slots), slots - 1)
        bounds: tuple[float, ...] = self._cumulative  # type: ignore[attr-defined]
        return bounds[slot] + (t * slots - slot) * (bounds[slot + 1] - bounds[slot])


def pacing_multiplier(mu: float) -> float:
    """α = 1/(1+μ) for μ ≥ 0."""
    if not (math.isfinite(mu) and mu >= 0.0):
        raise ValueError(f"mu must be finite and >= 0, got {mu!r}")
    return 1.0 / (1.0 + mu)


def day_fraction(now_ms: int, day_start_ms: int, day_end_ms: int) -> float:
    """How much of the campaign's day (its bounds, DST-aware, from eligibility) has passed, in [0, 1]."""
    if day_end_ms <= day_start_ms:
        raise ValueError(f"day bounds must have end > start, got {day_start_ms}, {day_end_ms}")
    return min(max((now_ms - day_start_ms) / (day_end_ms - day_start_ms), 0.0), 1.0)


def day_budget(state: BudgetState, limits: BudgetLimits) -> int | None:
    """What the campaign may spend today in all: its daily limit, capped by what the total leaves."""
    if limits.daily_micro is None:
        return None
    budget = limits.daily_micro
    if limits.total_micro is not None:
        left_total = limits.total_micro - state.spent_total - state.reserved_total
        budget = min(budget, state.spent_today + state.reserved_today + max(0, left_total))
    return budget


def pacing_target(
    state: BudgetState,
    limits: BudgetLimits,
    day_fraction: float,
    traffic: TrafficCurve,
    horizon: float = DEFAULT_HORIZON,
) -> float:
    """ρ, micro-units per auction: (B·F(t + h) − spent − reserved) over the auctions expected in (t, t + h].

    The auctions expected are today's so far scaled by the traffic share of the horizon
    (n_today · (F(t+h) − F(t)) / F(t)); before the first auction of the day, one. At least
    MIN_TARGET_MICRO. Raises ValueError without a daily budget (only a daily budget is paced).
    """
    budget = day_budget(state, limits)
    if budget is None:
        raise ValueError("pacing needs a daily budget (limits.daily_micro is None)")
    if not (math.isfinite(day_fraction) and math.isfinite(horizon) and horizon > 0.0):
        raise ValueError(
            f"day_fraction and horizon must be finite, horizon > 0: {day_fraction!r}, {horizon!r}"
        )
    now = min(max(day_fraction, 0.0), 1.0)
    share_now = traffic.cumulative(now)
    share_ahead = traffic.cumulative(min(1.0, now + horizon))
    wanted = budget * share_ahead - state.spent_today - state.reserved_today
    expected = 1.0
    if state.auctions_today > 0 and share_now > 0.0:
        expected = max(1.0, state.auctions_today * (share_ahead - share_now) / share_now)
    return max(MIN_TARGET_MICRO, wanted / expected)


def pacing_update(mu: float, step: PacingStep, spent_micro: int) -> float:
    """μ ← clip(μ − ε·(ρ − z)/ρ, 0, μ̄) after a billed auction with charge z = ``spent_micro``.

    Evaluated as ``min(max(mu - eps * (rho - z) / rho, 0), mu_max)`` — left to right, in float64, the
    same operations in the same order as the budget script, so both give the same bits.
    """
    rho, eps, mu_max = float(step.target_micro), float(step.epsilon), float(step.mu_max)
    if not (math.isfinite(rho) and rho > 0.0):
        raise ValueError(f"step.target_micro must be finite and > 0, got {step.target_micro!r}")
    if not (math.isfinite(eps) and eps > 0.0 and math.isfinite(mu_max) and mu_max >= 0.0):
        raise ValueError(f"step.epsilon must be > 0 and step.mu_max >= 0, got {eps!r}, {mu_max!r}")
    if not (math.isfinite(mu) and mu >= 0.0) or spent_micro < 0:
        raise ValueError(f"mu must be >= 0 and spent_micro >= 0, got {mu!r}, {spent_micro!r}")
    z = float(spent_micro)
    return min(max(mu - eps * (rho - z) / rho, 0.0), mu_max)


def pacing_step(
    state: BudgetState,
    limits: BudgetLimits,
    day_fraction: float,
    traffic: TrafficCurve,
    epsilon: float = DEFAULT_EPSILON,
    mu_max: float = DEFAULT_MU_MAX,
) -> PacingStep | None:
    """The step to post with the auction's charge; None for a campaign without a daily budget."""
    if limits.daily_micro is None:
        return None
    return PacingStep(pacing_target(state, limits, day_fraction, traffic), epsilon, mu_max)
