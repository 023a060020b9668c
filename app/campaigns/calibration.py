"""Knowing what to bid: an advertiser's expected cost per auction and per 1,000 at any value scale.

From the candidate tables of test auctions (per query: log π_ref, log q, the advertiser's
log-likelihood ratio log π_i − log π_ref = r_i / s_i per candidate, the other advertisers' rewards,
τ), her expected payment at a value scale s is the mechanism's own (`mechanism.allocation_and_payments`
with her row r_i = s·(log π_i − log π_ref)); the cost per 1,000 auctions is 1,000 × its mean over the
queries, and `solve_value_scale` finds the s that meets a target cost per 1,000 by bisection.

Why bisection is exact: on a fixed candidate set p(s) = τ·KL(π_s ‖ π^{-i}) with π_s ∝ π^{-i}·e^{s·λ/τ}
(λ her log-likelihood ratio), so p(0) = 0 and p'(s) = s·Var_{π_s}(λ)/τ ≥ 0 (DESIGN.md § the ad-server
layer): p is continuous and non-decreasing, and so is the mean over queries.
Why the curve holds for every s from one set of test auctions: the candidate set is report-independent
(docs/MECHANISM.md, last section: what is drawn depends on the query, the descriptions and the
settings, never on a value scale), so the candidates drawn at her current s are a sample of those
drawn at any s, for every proposal; the curve is the mechanism's exact expected payment on those
candidates. What remains is sampling noise: few queries, one candidate set each.

Pure: numpy and `app.mechanism` only; no I/O. Money here is in currency units (floats); the API
rounds to micro-units at its edge.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from app import mechanism

MAX_VALUE_SCALE = 1e3  # the API's bound on a value scale (AdvertiserIn.value_scale ≤ 1000)
MICRO_PER_UNIT = 1_000_000
AUCTIONS_PER_MILLE = 1_000
DEFAULT_TOLERANCE_MICRO = 1.0  # the solved s meets the target within one micro-unit per 1,000
_MAX_BISECTIONS = 200


@dataclass(frozen=True)
class SampleAuction:
    """One test auction's table, as the calibration needs it (arrays of M candidates)."""

    log_ref: np.ndarray  # (M,) log π_ref(y_j)
    log_proposal: np.ndarray  # (M,) log q(y_j), the density each was drawn from
    log_ratio: np.ndarray  # (M,) λ_j = log π_i(y_j) − log π_ref(y_j): her reward / her value scale
    others: np.ndarray  # (k, M) the other advertisers' rewards as they ran (k may be 0)
    tau: float

    @classmethod
    def from_rewards(
        cls,
        advertiser_id: str,
        value_scale: float,
        tau: float,
        log_ref: Sequence[float],
        log_proposal: Sequence[float],
        rewards: Mapping[str, Sequence[float]],
    ) -> SampleAuction:
        """From a table's columns: `rewards` by advertiser id (hers at `value_scale`, the scale the
        auction ran her with); raises ValueError naming what is wrong."""
        if not value_scale > 0:
            raise ValueError(f"value_scale must be > 0, got {value_scale!r}")
        if advertiser_id not in rewards:
            raise ValueError(f"advertiser {advertiser_id!r} has no rewards in this table")
        num_candidates = len(log_ref)
        others = [np.asarray(row, dtype=np.float64) for key, row in rewards.items() if key != advertiser_id]
        return cls(
            log_ref=np.asarray(log_ref, dtype=np.float64),
            log_proposal=np.asarray(log_proposal, dtype=np.float64),
            log_ratio=np.asarray(rewards[advertiser_id], dtype=np.float64) / value_scale,
            others=np.stack(others) if others else np.zeros((0, num_candidates)),
            tau=float(tau),
        )


@dataclass(frozen=True)
class CurvePoint:
    value_scale: float
    cost_per_auction: float  # expected payment per auction, currency units
    cost_per_1000: float  # 1,000 × that

    @property
    def cost_per_1000_micro(self) -> float:
        return self.cost_per_1000 * MICRO_PER_UNIT


@dataclass(frozen=True)
class ScaleSolution:
    """The value scale for a target cost per 1,000 (micro-units).

    `reached` is False when even MAX_VALUE_SCALE costs less than the target: `value_scale` is then
    MAX_VALUE_SCALE and `cost_per_1000_micro` the most any allowed value scale costs.
    `within_tolerance`: |cost − target| ≤ the tolerance (False only where the curve is steeper than
    float64 can resolve, or not reached)."""

    target_per_1000_micro: float
    value_scale: float
    cost_per_1000_micro: float
    reached: bool
    within_tolerance: bool
    bisections: int


def expected_payment(auction: SampleAuction, value_scale: float) -> float:
    """p_i(s): her expected payment in this auction at value scale s (≥ 0; exactly 0 at s = 0)."""
    rewards = np.vstack([value_scale * auction.log_ratio, auction.others])
    _, payments = mechanism.allocation_and_payments(
        rewards, auction.log_ref, auction.log_proposal, auction.tau
    )
    return max(0.0, float(payments[0]))  # τ·KL ≥ 0; clip rounding below zero


def mean_payment(auctions: Sequence[SampleAuction], value_scale: float) -> float:
    """Her expected cost per auction at s, averaged over the sample's auctions."""
    if not auctions:
        raise ValueError("need at least one auction")
    return float(np.mean([expected_payment(auction, value_scale) for auction in auctions]))


def cost_curve(auctions: Sequence[SampleAuction], value_scales: Sequence[float]) -> list[CurvePoint]:
    """(s, cost per auction, cost per 1,000) for each s."""
    points = []
    for scale in value_scales:
        mean = mean_payment(auctions, float(scale))
        points.append(CurvePoint(float(scale), mean, AUCTIONS_PER_MILLE * mean))
    return points


def solve_value_scale(
    auctions: Sequence[SampleAuction],
    target_per_1000_micro: float,
    max_value_scale: float = MAX_VALUE_SCALE,
    tolerance_micro: float = DEFAULT_TOLERANCE_MICRO,
) -> ScaleSolution:
    """The s in [0, max_value_scale] whose cost per 1,000 is the target (micro-units), by bisection
    on the non-decreasing cost; the largest cost when no allowed s reaches it."""
    if not target_per_1000_micro > 0:
        raise ValueError(f"target_per_1000_micro must be > 0, got {target_per_1000_micro!r}")

    def cost_micro(scale: float) -> float:
        return AUCTIONS_PER_MILLE * MICRO_PER_UNIT * mean_payment(auctions, scale)

    high, high_cost = max_value_scale, cost_micro(max_value_scale)
    if high_cost < target_per_1000_micro - tolerance_micro:
        return ScaleSolution(target_per_1000_micro, high, high_cost, False, False, 0)
    if abs(high_cost - target_per_1000_micro) <= tolerance_micro:
        return ScaleSolution(target_per_1000_micro, high, high_cost, True, True, 0)
    low = 0.0
    best, best_cost = high, high_cost
    for step in range(1, _MAX_BISECTIONS + 1):
        middle = (low + high) / 2
        if middle in (low, high):  # the interval is one ulp: as close as float64 gets
            return ScaleSolution(target_per_1000_micro, best, best_cost, True, False, step)
        middle_cost = cost_micro(middle)
        if abs(middle_cost - target_per_1000_micro) < abs(best_cost - target_per_1000_micro):
            best, best_cost = middle, middle_cost
        if abs(middle_cost - target_per_1000_micro) <= tolerance_micro:
            return ScaleSolution(target_per_1000_micro, middle, middle_cost, True, True, step)
        if middle_cost < target_per_1000_micro:
            low = middle
        else:
            high = middle
    return ScaleSolution(target_per_1000_micro, best, best_cost, True, False, _MAX_BISECTIONS)
