"""Fitting an auction into the advertisers' remaining budgets: lower α_i until every charge fits.

Pure (numpy, app.mechanism, app.ledger.events' `to_micro_units`; no Redis, no I/O). The payment of i
with the others fixed, p_i(α) for the row α·r_i, is continuous and non-decreasing in α with p_i(0) = 0
(p_i'(α) = α·Var_π(r_i)/τ ≥ 0, docs/DESIGN.md § The ad-server layer), so the largest charge that fits
is found by a safeguarded Newton–bisection on α ∈ [0, α_current]. Stopping rule, exact in
micro-units: the bracket [lo, hi] always has charge(lo) ≤ remaining < charge(hi); it stops when
charge(lo) == remaining (the whole remaining budget is charged), or charge(hi) − charge(lo) ≤ 1
(which forces charge(lo) == remaining), or the bracket is one float wide; it returns lo.
Several binding advertisers: rounds (α only ever lowered) up to `max_rounds`, then α = 0 (dropped:
r_i ≡ 0, payment exactly 0.0) for those that still do not fit, repeated until everyone fits. The
outcome is then ONE `mechanism.run_auction` with a fresh generator, so the seed replays it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from app import mechanism
from app.ledger.events import to_micro_units

__all__ = ["BudgetFit", "RngSource", "charge_micro", "fit_budgets"]

FloatArray = NDArray[np.float64]
# A seed (→ np.random.default_rng(seed)) or a factory returning a FRESH, identically seeded generator
# on every call (the no-binding check and the final auction each draw from their own).
RngSource = int | Callable[[], np.random.Generator]

_FAST_CHARGE_LIMIT = 1e9  # micro-units below which `charge_micro` rounds the float product
_MAX_SOLVES_PER_FIT = 160  # Newton–bisection steps for one advertiser in one round (52 halvings suffice)


@dataclass(frozen=True)
class BudgetFit:
    """The fitted auction: α_budget per advertiser and the one outcome run with them.

    ``alphas`` (n,) in [0, 1]: 1 = not lowered, 0 = dropped. ``payments_micro`` are the charges
    (`charge_micro` of ``outcome.payments``), each ≤ its remaining budget. ``rounds`` is the number of
    lowering rounds (0: no budget bound). ``alpha_rounds`` the α's after each round (for the audit).
    """

    alphas: FloatArray
    outcome: mechanism.AuctionOutcome
    payments_micro: list[int]
    rounds: int
    lowered: list[int]
    dropped: list[int]
    alpha_rounds: tuple[tuple[float, ...], ...] = ()


def charge_micro(payment: float) -> int:
    """The whole micro-units billed for a payment: `to_micro_units` (half to even), never below 0
    (p_i ≥ 0 by the offset; only float noise can make it a hair negative).

    Fast path, same result: below 1e9 micro, payment·1e6 is within 1e-7 of the exact product, so
    when it is more than 1e-6 from a half-integer, rounding it to nearest is `to_micro_units`.
    """
    scaled = float(payment) * 1e6
    if abs(scaled) < _FAST_CHARGE_LIMIT:
        nearest = math.floor(scaled + 0.5)
        if abs(scaled - nearest) < 0.5 - 1e-6:
            return max(0, nearest)
    return max(0, to_micro_units(float(payment)))


def _rng_factory(source: RngSource) -> Callable[[], np.random.Generator]:
    if isinstance(source, bool):
        raise ValueError("rng_seed_or_factory must be an int seed or a generator factory, not a bool")
    if isinstance(source, int | np.integer):
        seed = int(source)
        if seed < 0:
            raise ValueError(f"rng_seed_or_factory: a seed must be >= 0, got {seed}")
        return lambda: np.random.default_rng(seed)
    if callable(source):
        return source
    raise ValueError(f"rng_seed_or_factory must be an int seed or a callable, got {type(source).__name__}")


def _check_remaining(remaining_micro: Sequence[int | None], num_advertisers: int) -> list[int | None]:
    limits = list(remaining_micro)
    if len(limits) != num_advertisers:
        raise ValueError(
            f"remaining_micro has {len(limits)} entries but rewards has n={num_advertisers} rows"
        )
    for index, limit in enumerate(limits):
        if limit is None:
            continue
        if isinstance(limit, bool) or not isinstance(limit, int | np.integer) or limit < 0:
            raise ValueError(f"remaining_micro[{index}] must be None or an int >= 0, got {limit!r}")
    return [None if limit is None else int(limit) for limit in limits]


def _binding(charges: list[int], limits: list[int | None]) -> list[int]:
    return [
        i for i, (c, limit) in enumerate(zip(charges, limits, strict=True)) if limit is not None and c > limit
    ]


class _Problem:
    """One candidate set and the reported rows; solves it for a vector of α's."""

    def __init__(self, rewards: FloatArray, log_ref: ArrayLike, log_proposal: ArrayLike, tau: float) -> None:
        self.rewards = rewards
        self.log_ref = log_ref
        self.log_proposal = log_proposal
        self.tau = float(tau)

    def scaled(self, alphas: FloatArray) -> FloatArray:
        scaled: FloatArray = self.rewards * alphas[:, None]
        scaled[alphas == 0.0] = 0.0  # a dropped row is +0.0 everywhere: her payment is exactly 0.0
        return scaled

    def solve(self, alphas: FloatArray) -> tuple[FloatArray, FloatArray]:
        return mechanism.allocation_and_payments(
            self.scaled(alphas), self.log_ref, self.log_proposal, self.tau
        )

    def charges(self, alphas: FloatArray) -> list[int]:
        return [charge_micro(p) for p in self.solve(alphas)[1]]

    def fit_one(self, alphas: FloatArray, index: int, limit: int) -> float:
        """The α ∈ [0, alphas[index]] whose charge is the largest that fits ``limit`` (module docstring)."""
        trial = alphas.copy()
        row = self.rewards[index]
        target = limit / 1e6  # aim at the middle of the rounding cell of ``limit``

        def at(alpha: float) -> tuple[int, float, float]:
            """(charge, payment, slope p'(α) = α·Var_π(r_i)/τ) at α."""
            trial[index] = alpha
            probabilities, payments = self.solve(trial)
            mean = float(row @ probabilities)
            variance = max(0.0, float((row * row) @ probabilities) - mean * mean)
            return charge_micro(payments[index]), float(payments[index]), alpha * variance / self.tau

        lo, hi = 0.0, float(alphas[index])
        charge_hi, payment, slope = at(hi)
        if charge_hi <= limit:
            return hi
        charge_lo, point, last_step = 0, hi, 2.0 * hi
        for _ in range(_MAX_SOLVES_PER_FIT):
            if charge_lo == limit or charge_hi - charge_lo <= 1 or hi - lo <= 4 * math.ulp(hi):
                break
            step = (payment - target) / slope if slope > 0.0 else math.inf
            # Newton while it lands inside the bracket and its steps at least halve (numerical
            # recipes' rtsafe); bisection otherwise, so the bracket always shrinks.
            if lo < point - step < hi and abs(step) <= 0.5 * last_step:
                point, last_step = point - step, abs(step)
            else:
                point, last_step = 0.5 * (lo + hi), 0.5 * (hi - lo)
            charge, payment, slope = at(point)
            if charge <= limit:
                lo, charge_lo = point, charge
            else:
                hi, charge_hi = point, charge
        return lo


def _lower(
    problem: _Problem, charges: list[int], limits: list[int | None], max_rounds: int
) -> tuple[FloatArray, int, list[tuple[float, ...]]]:
    """(α's, rounds, α's after each round): Gauss–Seidel rounds of fits, then drops, until all fit."""
    binding = _binding(charges, limits)
    alphas, rounds, history = np.ones(len(limits)), 0, []
    fitted: set[int] = set()
    while binding and rounds < max_rounds:
        rounds += 1
        for index in binding:  # each fit sees the α's lowered before it in this round
            limit = limits[index]
            assert limit is not None
            # Fitted before and over again: the others' lowering raised her charge by the excess;
            # aim that much lower (unless it is over half her budget): the next raise is smaller.
            excess = charges[index] - limit if index in fitted else 0
            excess = excess if 2 * excess <= limit else 0
            alphas[index] = problem.fit_one(alphas, index, max(0, limit - excess))
            fitted.add(index)
        history.append(tuple(float(a) for a in alphas))
        charges = problem.charges(alphas)
        binding = _binding(charges, limits)
    while binding:  # dropping one can raise another's payment: drop until everyone fits
        alphas[binding] = 0.0
        binding = _binding(problem.charges(alphas), limits)
    return alphas, rounds, history


def fit_budgets(
    rewards: ArrayLike,
    log_ref: ArrayLike,
    log_proposal: ArrayLike,
    tau: float,
    remaining_micro: Sequence[int | None],
    rng_seed_or_factory: RngSource,
    max_rounds: int = 8,
) -> BudgetFit:
    """Resolve the auction with each row i scaled by α_i ≤ 1 so that every charge fits its budget.

    ``rewards`` (n, M) already carry value scale × pacing α; ``remaining_micro[i]`` is what i may
    still be charged (None = no limit). A non-binding auction is ``run_auction`` on ``rewards``
    unchanged (one mechanism solve). Raises ValueError naming a bad argument.
    """
    rewards_array = np.array(rewards, dtype=np.float64)
    if rewards_array.ndim != 2:
        raise ValueError(f"rewards must be a 2-D array, got shape {rewards_array.shape}")
    limits = _check_remaining(remaining_micro, rewards_array.shape[0])
    if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 0:
        raise ValueError(f"max_rounds must be an int >= 0, got {max_rounds!r}")
    make_rng = _rng_factory(rng_seed_or_factory)
    outcome = mechanism.run_auction(rewards_array, log_ref, log_proposal, tau, make_rng())
    charges = [charge_micro(p) for p in outcome.payments]
    binding = _binding(charges, limits)
    num_advertisers = rewards_array.shape[0]
    if not binding:
        return BudgetFit(np.ones(num_advertisers), outcome, charges, 0, [], [])
    problem = _Problem(rewards_array, log_ref, log_proposal, tau)
    alphas, rounds, history = _lower(problem, charges, limits, max_rounds)
    outcome = mechanism.run_auction(problem.scaled(alphas), log_ref, log_proposal, tau, make_rng())
    charges = [charge_micro(p) for p in outcome.payments]
    if _binding(charges, limits):  # pragma: no cover - run_auction is bit-identical to the fit's solves
        raise RuntimeError("budget fit: the final auction's payments differ from the fitted ones")
    return BudgetFit(
        alphas=alphas,
        outcome=outcome,
        payments_micro=charges,
        rounds=rounds,
        lowered=[i for i, a in enumerate(alphas) if 0.0 < a < 1.0],
        dropped=[i for i, a in enumerate(alphas) if a == 0.0],
        alpha_rounds=tuple(history),
    )
