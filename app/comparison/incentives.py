"""The incentive gap of a mechanism on one candidate set: what the best misreport found gains.

An advertiser with true rewards r_i who reports r'_i gets true utility
``u_i(r'_i) = Σ_j π_j(r'_i) r_i(y_j) − p_i(r'_i)`` (the others' reports fixed). The gap is
``max over the searched r'_i of u_i(r'_i) − u_i(r_i)``, ≥ 0; a DSIC mechanism has gap 0 (up to rounding)
however hard one searches, so a positive gap is a certificate of manipulability. The search is the one
the DSIC tests of `tests/unit/test_mechanism.py` use: scaled, shifted and sign-flipped reports, all weight
on one candidate (for every candidate), noisy reports, then a derivative-free local optimisation
(Powell, bounded evaluations) from the best report found. Pure numpy + scipy; imports `mechanisms`.
See docs/DESIGN.md § Layout.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize

from app.comparison.mechanisms import CandidateSet, FloatArray, Mechanism

SCALES = (0.0, 0.25, 0.5, 0.75, 0.9, 1.1, 1.5, 2.0, -1.0)
SHIFTS = (-2.0, -1.0, -0.5, -0.1, 0.1, 0.5, 1.0, 2.0)  # times the report's scale


def true_utility(
    mechanism: Mechanism, candidates: CandidateSet, advertiser: int, report: FloatArray
) -> float:
    """u_i(report) under the true rewards in ``candidates``."""
    outcome = mechanism(candidates.with_report(advertiser, report))
    return float(outcome.probabilities @ candidates.rewards[advertiser] - outcome.payments[advertiser])


def misreports(true_rewards: FloatArray, rng: np.random.Generator) -> list[FloatArray]:
    """The fixed family of misreports of one advertiser (scaled, shifted, concentrated, noisy)."""
    scale = 1.0 + float(np.abs(true_rewards).max())
    reports = [factor * true_rewards for factor in SCALES]
    reports += [true_rewards + shift * scale for shift in SHIFTS]
    for j in range(true_rewards.shape[0]):
        concentrated = np.zeros_like(true_rewards)
        concentrated[j] = scale
        reports += [true_rewards + concentrated, true_rewards - concentrated, 4.0 * concentrated]
    reports += [true_rewards + rng.normal(0.0, 0.1 * scale, true_rewards.shape) for _ in range(4)]
    reports.append(rng.normal(0.0, scale, true_rewards.shape))
    return reports


def incentive_gap(
    mechanism: Mechanism,
    candidates: CandidateSet,
    advertiser: int,
    rng: np.random.Generator,
    *,
    optimise_evaluations: int = 200,
) -> float:
    """The largest gain in true utility over truthful reporting the search finds (≥ 0)."""
    true_rewards = candidates.rewards[advertiser]

    def utility(report: FloatArray) -> float:
        return true_utility(mechanism, candidates, advertiser, report)

    truthful = utility(true_rewards)
    best_value, best_report = truthful, true_rewards
    for report in misreports(true_rewards, rng):
        value = utility(report)
        if value > best_value:
            best_value, best_report = value, report
    if optimise_evaluations > 0:
        result = optimize.minimize(
            lambda report: -utility(np.asarray(report, dtype=np.float64)),
            best_report,
            method="Powell",
            options={"maxfev": optimise_evaluations, "xtol": 1e-6, "ftol": 1e-12},
        )
        best_value = max(best_value, -float(result.fun))
    return max(best_value - truthful, 0.0)


def max_incentive_gap(
    mechanism: Mechanism,
    candidates: CandidateSet,
    rng: np.random.Generator,
    *,
    optimise_evaluations: int = 200,
) -> float:
    """The largest gap over all advertisers of the auction."""
    return max(
        incentive_gap(mechanism, candidates, i, rng, optimise_evaluations=optimise_evaluations)
        for i in range(candidates.rewards.shape[0])
    )
