"""The MOSAIC mechanism: allocation, draw and payments over a fixed candidate set.

The math is specified in ``docs/MECHANISM.md`` (the authority); this module implements it and
nothing else. It is pure: numpy only, float64, log-sum-exp throughout, no I/O and no web types.

Shapes: ``n`` advertisers, ``M`` candidate replies. ``rewards`` is ``(n, M)`` with
``r_i(y_j) = s_i (log π_i(y_j) − log π_ref(y_j))``; ``log_ref`` and ``log_proposal`` are ``(M,)``.
Every function validates its inputs and raises ``ValueError`` with a message naming the argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

ProposalKind = Literal["context", "reference", "mixture"]

FloatArray = NDArray[np.float64]

# Shares of a mixture must sum to one up to this tolerance (they are fractions of M draws).
_SHARE_SUM_TOLERANCE = 1e-9

__all__ = [
    "AuctionOutcome",
    "ProposalKind",
    "allocation_and_payments",
    "allocation_probabilities",
    "default_tau",
    "effective_sample_size",
    "expected_utilities",
    "log_target_unnormalised",
    "log_weights",
    "mixture_log_proposal",
    "payments_without_offset",
    "rewards_from_logprobs",
    "run_auction",
    "social_welfare",
]


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _as_array(name: str, value: ArrayLike, ndim: int) -> FloatArray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a numeric array: {error}") from None
    if array.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, got shape {array.shape}")
    return array


def _check_finite(name: str, array: FloatArray) -> None:
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def _check_tau(tau: float) -> float:
    try:
        value = float(tau)
    except (TypeError, ValueError):
        raise ValueError(f"tau must be a number, got {tau!r}") from None
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"tau must be finite and > 0, got {tau!r}")
    return value


def _per_candidate(name: str, values: ArrayLike, num_candidates: int, rewards_name: str) -> FloatArray:
    array = _as_array(name, values, 1)
    if array.shape[0] != num_candidates:
        raise ValueError(
            f"{name} has {array.shape[0]} entries but {rewards_name} has M={num_candidates} columns"
        )
    return array


def _candidate_inputs(
    rewards: ArrayLike, log_ref: ArrayLike, log_proposal: ArrayLike | None, rewards_name: str = "rewards"
) -> tuple[FloatArray, FloatArray, FloatArray | None]:
    """Shape-check (n, M) rewards against (M,) log-probabilities; finiteness is checked later."""
    rewards_array = _as_array(rewards_name, rewards, 2)
    num_candidates = rewards_array.shape[1]
    if num_candidates < 1:
        raise ValueError(f"need at least one candidate (M >= 1), got {rewards_name} of shape (n, 0)")
    log_ref_array = _per_candidate("log_ref", log_ref, num_candidates, rewards_name)
    if log_proposal is None:
        return rewards_array, log_ref_array, None
    return (
        rewards_array,
        log_ref_array,
        _per_candidate("log_proposal", log_proposal, num_candidates, rewards_name),
    )


def _explain_non_finite(
    rewards: FloatArray, log_ref: FloatArray, log_proposal: FloatArray | None, what: str
) -> ValueError:
    """The error for a non-finite result: blame the first non-finite input, else overflow."""
    _check_finite("rewards", rewards)
    _check_finite("log_ref", log_ref)
    if log_proposal is not None:
        _check_finite("log_proposal", log_proposal)
    return ValueError(f"{what} overflowed: rewards / tau too large in magnitude for float64")


# --------------------------------------------------------------------------------------------
# inputs: τ, rewards, proposal
# --------------------------------------------------------------------------------------------


def default_tau(num_advertisers: int) -> float:
    """The paper's weight on the user: τ = 1 for up to 2 advertisers, τ = n/2 above."""
    if num_advertisers < 0:
        raise ValueError(f"num_advertisers must be >= 0, got {num_advertisers}")
    return 1.0 if num_advertisers <= 2 else num_advertisers / 2.0


def rewards_from_logprobs(
    log_advertisers: ArrayLike, log_ref: ArrayLike, value_scales: ArrayLike
) -> FloatArray:
    """DPO-implied rewards r_i(y_j) = s_i (log π_i(y_j) − log π_ref(y_j)), shape (n, M)."""
    log_advertisers_array, log_ref_array, _ = _candidate_inputs(
        log_advertisers, log_ref, None, rewards_name="log_advertisers"
    )
    scales = _as_array("value_scales", value_scales, 1)
    if scales.shape[0] != log_advertisers_array.shape[0]:
        raise ValueError(
            f"value_scales has {scales.shape[0]} entries but log_advertisers has "
            f"n={log_advertisers_array.shape[0]} rows"
        )
    _check_finite("log_advertisers", log_advertisers_array)
    _check_finite("log_ref", log_ref_array)
    if not (np.isfinite(scales).all() and (scales > 0.0).all()):
        raise ValueError("value_scales must be finite and > 0")
    rewards: FloatArray = scales[:, None] * (log_advertisers_array - log_ref_array)
    return rewards


def mixture_log_proposal(log_components: ArrayLike, shares: ArrayLike) -> FloatArray:
    """log q(y_j) = logsumexp_k(log α_k + log q_k(y_j)) for a mixture of K proposals (balance heuristic).

    ``log_components`` is (K, M): every candidate scored under every component. Entries may be −inf
    (a candidate outside a top-p component's support) as long as some component with a positive
    share gives the candidate positive probability — it was drawn from one of them.
    """
    components = _as_array("log_components", log_components, 2)
    share_array = _as_array("shares", shares, 1)
    num_components, num_candidates = components.shape
    if num_components < 1 or num_candidates < 1:
        raise ValueError(f"log_components must be (K>=1, M>=1), got shape {components.shape}")
    if share_array.shape[0] != num_components:
        raise ValueError(
            f"shares has {share_array.shape[0]} entries but log_components has K={num_components}"
        )
    if not (np.isfinite(share_array).all() and (share_array >= 0.0).all()):
        raise ValueError("shares must be finite and >= 0")
    if abs(float(share_array.sum()) - 1.0) > _SHARE_SUM_TOLERANCE:
        raise ValueError(f"shares must sum to 1, got {float(share_array.sum())!r}")
    if np.isnan(components).any() or (components == np.inf).any():
        raise ValueError("log_components contains NaN or +inf")
    with np.errstate(divide="ignore"):  # a zero share is log 0 = −inf: that component drops out
        log_shares = np.log(share_array)
    terms = log_shares[:, None] + components
    top = terms.max(axis=0)
    if not np.isfinite(top).all():
        bad = int(np.flatnonzero(~np.isfinite(top))[0])
        raise ValueError(f"candidate {bad} has zero probability under every component with a positive share")
    result: FloatArray = top + np.log(np.exp(terms - top).sum(axis=0))
    return result


# --------------------------------------------------------------------------------------------
# the mechanism
# --------------------------------------------------------------------------------------------


def _log_weights(
    rewards: FloatArray, log_ref: FloatArray, log_proposal: FloatArray, tau: float
) -> tuple[FloatArray, FloatArray]:
    """(r/τ, ℓ) with ℓ_j = Σ_i r_ij/τ + log π_ref_j − log q_j; raises if ℓ is not finite.

    Callers hold ``np.errstate(over="ignore", invalid="ignore")``: bad inputs are reported by the
    ValueError below, not by numpy warnings on the way there.
    """
    scaled = rewards / tau
    ell = np.add.reduce(scaled, axis=0)
    ell += log_ref
    ell -= log_proposal
    # A NaN or ±inf anywhere in the inputs reaches ℓ, so one check covers all of them.
    if not np.isfinite(ell).all():
        raise _explain_non_finite(rewards, log_ref, log_proposal, "log-weights")
    return scaled, ell


def _solve(
    rewards: ArrayLike, log_ref: ArrayLike, log_proposal: ArrayLike, tau: float
) -> tuple[float, FloatArray, FloatArray, FloatArray, FloatArray, float]:
    """Everything but the draw: (τ, r, ℓ, π, U, τ·LSE(ℓ))."""
    tau_value = _check_tau(tau)
    rewards_array, log_ref_array, log_proposal_array = _candidate_inputs(rewards, log_ref, log_proposal)
    assert log_proposal_array is not None
    num_advertisers, num_candidates = rewards_array.shape
    with np.errstate(over="ignore", invalid="ignore"):
        scaled, ell = _log_weights(rewards_array, log_ref_array, log_proposal_array, tau_value)
        # Row 0 is ℓ, row 1+i is β_{-i} = ℓ − r_i/τ: one max-shifted LSE for all of them at once.
        # Computing ℓ's LSE in the same batch makes r_i ≡ 0 give β_{-i} == ℓ bit for bit, so U_i = 0
        # exactly (Lemma B.1) rather than up to rounding.
        stacked = np.empty((num_advertisers + 1, num_candidates))
        stacked[0] = ell
        np.subtract(ell, scaled, out=stacked[1:])
        row_max = np.maximum.reduce(stacked, axis=1)
        stacked -= row_max[:, None]
        np.exp(stacked, out=stacked)
        row_sum = np.add.reduce(stacked, axis=1)
        lse = row_max + np.log(row_sum)
    if not np.isfinite(lse).all():  # ℓ is finite, so only β = ℓ − r_i/τ can have overflowed
        raise ValueError("log-sum-exp without an advertiser overflowed: rewards / tau too large for float64")

    probabilities: FloatArray = stacked[0] / row_sum[0]
    utilities: FloatArray = tau_value * (lse[0] - lse[1:])
    return tau_value, rewards_array, ell, probabilities, utilities, tau_value * float(lse[0])


def log_weights(rewards: ArrayLike, log_ref: ArrayLike, log_proposal: ArrayLike, tau: float) -> FloatArray:
    """ℓ_j = Σ_i r_ij/τ + log π_ref(y_j) − log q(y_j), shape (M,)."""
    tau_value = _check_tau(tau)
    rewards_array, log_ref_array, log_proposal_array = _candidate_inputs(rewards, log_ref, log_proposal)
    assert log_proposal_array is not None
    with np.errstate(over="ignore", invalid="ignore"):
        return _log_weights(rewards_array, log_ref_array, log_proposal_array, tau_value)[1]


def allocation_probabilities(
    rewards: ArrayLike, log_ref: ArrayLike, log_proposal: ArrayLike, tau: float
) -> FloatArray:
    """The allocation π = softmax(ℓ) over the candidates, shape (M,)."""
    return _solve(rewards, log_ref, log_proposal, tau)[3]


def allocation_and_payments(
    rewards: ArrayLike, log_ref: ArrayLike, log_proposal: ArrayLike, tau: float
) -> tuple[FloatArray, FloatArray]:
    """(π, p): what `run_auction` decides apart from the draw, in one pass (for analysis: what-if,
    `mosaic compare`'s incentive search). Bit-identical to `run_auction`'s probabilities and payments."""
    _, rewards_array, _, probabilities, utilities, _ = _solve(rewards, log_ref, log_proposal, tau)
    payments: FloatArray = rewards_array @ probabilities - utilities
    return probabilities, payments


def expected_utilities(
    rewards: ArrayLike, log_ref: ArrayLike, log_proposal: ArrayLike, tau: float
) -> FloatArray:
    """Truthful expected utilities U_i = τ·LSE(ℓ) − τ·LSE(β_{-i}), shape (n,)."""
    return _solve(rewards, log_ref, log_proposal, tau)[4]


def payments_without_offset(
    rewards: ArrayLike, log_ref: ArrayLike, log_proposal: ArrayLike, tau: float
) -> FloatArray:
    """Rochet payments with offset C = 0: R_i − τ·LSE(ℓ), shape (n,). For analysis only."""
    _, rewards_array, _, probabilities, _, tau_lse = _solve(rewards, log_ref, log_proposal, tau)
    result: FloatArray = rewards_array @ probabilities - tau_lse
    return result


def effective_sample_size(probabilities: ArrayLike) -> float:
    """1 / Σ_j π_j² — between 1 (one candidate takes all) and M (uniform)."""
    array = _as_array("probabilities", probabilities, 1)
    if array.shape[0] < 1:
        raise ValueError("probabilities must not be empty")
    _check_finite("probabilities", array)
    sum_of_squares = float(array @ array)
    if sum_of_squares <= 0.0:
        raise ValueError("probabilities must not be all zero")
    return 1.0 / sum_of_squares


def social_welfare(rewards: ArrayLike, log_ref: ArrayLike, tau: float) -> FloatArray:
    """Social welfare of each candidate, τ·log π_ref(y_j) + Σ_i r_i(y_j), shape (M,)."""
    tau_value = _check_tau(tau)
    rewards_array, log_ref_array, _ = _candidate_inputs(rewards, log_ref, None)
    _check_finite("rewards", rewards_array)
    _check_finite("log_ref", log_ref_array)
    result: FloatArray = tau_value * log_ref_array + rewards_array.sum(axis=0)
    return result


def log_target_unnormalised(rewards: ArrayLike, log_ref: ArrayLike, tau: float) -> FloatArray:
    """log π*(y_j) up to its normaliser: log π_ref(y_j) + Σ_i r_i(y_j)/τ, shape (M,)."""
    tau_value = _check_tau(tau)
    rewards_array, log_ref_array, _ = _candidate_inputs(rewards, log_ref, None)
    _check_finite("rewards", rewards_array)
    _check_finite("log_ref", log_ref_array)
    result: FloatArray = log_ref_array + (rewards_array / tau_value).sum(axis=0)
    return result


@dataclass(frozen=True, slots=True)
class AuctionOutcome:
    """Everything one auction decides; the single source for the response, billing and evaluation.

    The arrays are read-only. Payments are expected payments: they do not depend on ``chosen_index``.
    """

    tau: float
    log_weights: FloatArray  # ℓ, (M,)
    probabilities: FloatArray  # softmax(ℓ), (M,)
    chosen_index: int  # J ~ probabilities
    expected_rewards: FloatArray  # R_i, (n,)
    expected_utilities: FloatArray  # U_i, (n,)
    payments: FloatArray  # p_i = R_i − U_i, (n,)
    revenue: float  # Σ_i p_i
    effective_sample_size: float  # 1 / Σ_j π_j²


def draw_index(probabilities: FloatArray, rng: np.random.Generator) -> int:
    """The candidate an auction draws from its allocation with `rng` (what `run_auction` does):
    `mosaic verify` replays a record's draw from its seed with it."""
    return _draw(probabilities, rng)


def _draw(probabilities: FloatArray, rng: np.random.Generator) -> int:
    """J ~ probabilities by inverse CDF on one uniform from the caller's generator."""
    cdf = np.cumsum(probabilities)
    # Scale by the total so rounding in the normalisation cannot leave a gap at the top;
    # side="right" never lands on a zero-probability candidate (its CDF step is flat).
    index = int(cdf.searchsorted(rng.random() * cdf[-1], side="right"))
    if index >= probabilities.shape[0]:  # u·total rounded up to total: take the last possible one
        index = int(np.flatnonzero(probabilities)[-1])
    return index


def run_auction(
    rewards: ArrayLike,
    log_ref: ArrayLike,
    log_proposal: ArrayLike,
    tau: float,
    rng: np.random.Generator,
) -> AuctionOutcome:
    """Resolve one MOSAIC auction over a fixed candidate set (Algorithm 1, Theorem 5.1 with offset).

    ``log_proposal`` must be the log-probability under the distribution each candidate was actually
    drawn from. The draw uses only ``rng``, so a seeded generator replays the auction.
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    tau_value, rewards_array, ell, probabilities, utilities, _ = _solve(rewards, log_ref, log_proposal, tau)
    expected_rewards: FloatArray = rewards_array @ probabilities
    payments: FloatArray = expected_rewards - utilities
    chosen_index = _draw(probabilities, rng)
    for array in (ell, probabilities, expected_rewards, utilities, payments):
        array.flags.writeable = False
    return AuctionOutcome(
        tau=tau_value,
        log_weights=ell,
        probabilities=probabilities,
        chosen_index=chosen_index,
        expected_rewards=expected_rewards,
        expected_utilities=utilities,
        payments=payments,
        revenue=float(np.add.reduce(payments)),
        effective_sample_size=1.0 / float(probabilities @ probabilities),
    )
