"""Mechanisms beside MOSAIC on one fixed candidate set: the pure part of `mosaic compare`.

Every mechanism is a function ``CandidateSet -> Outcome``: the probability of returning each of the M
candidates (one-hot for a deterministic choice) and each advertiser's payment, both computed from the
*reported* rewards in `CandidateSet.rewards`. The notation is MECHANISM.md's: ``rewards`` (n, M) with
``r_i(y_j) = s_i (log π_i(y_j) − log π_ref(y_j))``, ``log_ref`` and ``log_proposal`` (M,), τ > 0.
Welfare of a candidate is ``W_j = Σ_i r_i(y_j) + τ log π_ref(y_j)`` (MECHANISM.md, "social welfare").

Pure numpy, no I/O; imports only `app.mechanism` (the service's own MOSAIC, not a copy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from app import mechanism

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]


@dataclass(frozen=True)
class CandidateSet:
    """One auction's candidates with everything the mechanisms read."""

    rewards: FloatArray  # (n, M) reported rewards
    log_ref: FloatArray  # (M,) log π_ref(y_j)
    log_proposal: FloatArray  # (M,) log q(y_j), the density each candidate was drawn from
    tau: float
    num_tokens: NDArray[np.int64]  # (M,) reply lengths in tokens
    named: BoolArray  # (n, M): candidate j names advertiser i

    def with_report(self, advertiser: int, report: FloatArray) -> CandidateSet:
        """The same auction with advertiser ``advertiser`` reporting ``report`` instead."""
        rewards = self.rewards.copy()
        rewards[advertiser] = report
        return replace(self, rewards=rewards)

    @property
    def welfare(self) -> FloatArray:
        """W_j = Σ_i r_i(y_j) + τ log π_ref(y_j), (M,)."""
        result: FloatArray = self.rewards.sum(axis=0) + self.tau * self.log_ref
        return result


@dataclass(frozen=True)
class Outcome:
    probabilities: FloatArray  # (M,) law of the returned candidate
    payments: FloatArray  # (n,) expected payments


Mechanism = Callable[[CandidateSet], Outcome]


def _one_hot(index: int, size: int) -> FloatArray:
    probabilities = np.zeros(size)
    probabilities[index] = 1.0
    return probabilities


def mosaic(candidates: CandidateSet) -> Outcome:
    """MOSAIC (Soumalias, Curry, Seuken; MECHANISM.md): π = softmax(ℓ), Rochet payments with the
    offset, p_i = R_i − U_i — the service's `app.mechanism`, unchanged. DSIC for a fixed candidate set."""
    probabilities, payments = mechanism.allocation_and_payments(
        candidates.rewards, candidates.log_ref, candidates.log_proposal, candidates.tau
    )
    return Outcome(probabilities, payments)


def mosaic_without_offset(candidates: CandidateSet) -> Outcome:
    """MOSAIC with offset C = 0 (the paper's §5.3 before the offset): p_i = R_i − τ·LSE(ℓ). Still DSIC
    (the offset does not depend on i's report) but not individually rational; for comparison only."""
    probabilities = mechanism.allocation_probabilities(
        candidates.rewards, candidates.log_ref, candidates.log_proposal, candidates.tau
    )
    payments = mechanism.payments_without_offset(
        candidates.rewards, candidates.log_ref, candidates.log_proposal, candidates.tau
    )
    return Outcome(probabilities, payments)


def no_ads(candidates: CandidateSet) -> Outcome:
    """No ads: the reference LLM's reply, revenue 0 — the user's optimum. On these candidates it is MOSAIC
    with every reward 0 (τ → ∞): self-normalised importance resampling of π_ref, π_j ∝ π_ref(y_j)/q(y_j)
    (uniform when q = π_ref), so as M grows the returned reply is a draw from π_ref itself."""
    log_weights = candidates.log_ref - candidates.log_proposal
    weights = np.exp(log_weights - log_weights.max())
    return Outcome(weights / weights.sum(), np.zeros(candidates.rewards.shape[0]))


def _best_of_m(candidates: CandidateSet) -> int:
    """j* = argmax_j W_j (the first on ties): the platform's objective without importance correction."""
    return int(np.argmax(candidates.welfare))


def best_of_m_vcg(candidates: CandidateSet) -> Outcome:
    """Best-of-M with VCG (Vickrey 1961, Clarke 1971, Groves 1973) over the M candidates: choose
    j* = argmax_j W_j and charge the Clarke pivot p_i = max_j W^{-i}_j − W^{-i}_{j*} with
    W^{-i}_j = W_j − r_i(y_j) (τ·log π_ref is the platform's own term, as in MOSAIC's objective).
    Deterministic, DSIC for a fixed candidate set, payments ≥ 0."""
    welfare = candidates.welfare
    chosen = int(np.argmax(welfare))
    without = welfare[None, :] - candidates.rewards  # (n, M): W^{-i}
    payments: FloatArray = without.max(axis=1) - without[:, chosen]
    return Outcome(_one_hot(chosen, welfare.shape[0]), payments)


def first_price_best_of_m(candidates: CandidateSet) -> Outcome:
    """First-price best-of-M: choose j* = argmax_j W_j and charge each advertiser her reported reward for
    it, p_i = max(r_i(y_{j*}), 0) (a reward below zero is a bid of zero: no advertiser is paid). The
    family of LLM-Auction (2025, first-price payments over a generated reply); not truthful: shading a
    report lowers the price and rarely the allocation, which `incentives.incentive_gap` finds."""
    chosen = _best_of_m(candidates)
    payments: FloatArray = np.maximum(candidates.rewards[:, chosen], 0.0)
    return Outcome(_one_hot(chosen, candidates.log_ref.shape[0]), payments)


def segment_auction(candidates: CandidateSet) -> Outcome:
    """A segment-auction analogue (Hajiaghayi, Lahaie, Rezaei, Shin, "Ad Auctions for LLMs via Retrieval
    Augmented Generation", NeurIPS 2024), stated on these candidates:

    - advertiser i's ad is her best candidate among those that name her, k_i = argmax_{j named} r_i(y_j),
      her bid b_i = max(r_i(y_{k_i}), 0) and its relevance q_i = exp(log π_ref(y_{k_i}) / |y_{k_i}|) (the
      reference model's per-token probability of the ad, in (0, 1]); no named candidate → no ad;
    - the segment goes to advertiser i with probability x_i = b_i q_i / Σ_k b_k q_k, and her ad is the
      reply; with no positive bid the reply is the no-ads one;
    - payment: Myerson's for this monotone single-parameter allocation (the randomized second-price-like
      rule), p_i = b_i x_i(b_i) − ∫_0^{b_i} x_i(z) dz = b_i x_i − b_i + (S_i/q_i) ln(1 + b_i q_i / S_i)
      with S_i = Σ_{k≠i} b_k q_k (p_i = 0 when S_i = 0: no competitor).
    Truthful in the bid b_i alone; not in the reward vector (which candidate is her ad, and the value she
    gets from the others' ads, are outside the bid), which the incentive search measures."""
    rewards = candidates.rewards
    num_advertisers, num_candidates = rewards.shape
    ad_index = np.full(num_advertisers, -1)
    strength = np.zeros(num_advertisers)  # b_i q_i
    relevance = np.ones(num_advertisers)
    bids = np.zeros(num_advertisers)
    for i in range(num_advertisers):
        named = np.flatnonzero(candidates.named[i])
        if named.size == 0:
            continue
        k = int(named[np.argmax(rewards[i, named])])
        ad_index[i] = k
        bids[i] = max(float(rewards[i, k]), 0.0)
        relevance[i] = float(np.exp(candidates.log_ref[k] / max(int(candidates.num_tokens[k]), 1)))
        strength[i] = bids[i] * relevance[i]
    total = float(strength.sum())
    if total <= 0.0:
        return no_ads(candidates)
    shares = strength / total
    probabilities = np.zeros(num_candidates)
    np.add.at(probabilities, ad_index[shares > 0], shares[shares > 0])
    payments = np.zeros(num_advertisers)
    for i in range(num_advertisers):
        others = total - strength[i]
        if bids[i] <= 0.0 or others <= 0.0:
            continue
        integral = bids[i] - (others / relevance[i]) * np.log1p(strength[i] / others)
        payments[i] = bids[i] * shares[i] - integral
    return Outcome(probabilities, payments)


# name → (mechanism, deterministic?); the order is the report's.
MECHANISMS: dict[str, Mechanism] = {
    "mosaic": mosaic,
    "mosaic_no_offset": mosaic_without_offset,
    "no_ads": no_ads,
    "vcg_best_of_m": best_of_m_vcg,
    "first_price_best_of_m": first_price_best_of_m,
    "segment_auction": segment_auction,
}

LABELS = {
    "mosaic": "MOSAIC",
    "mosaic_no_offset": "MOSAIC, no offset",
    "no_ads": "no ads (π_ref)",
    "vcg_best_of_m": "best-of-M + VCG",
    "first_price_best_of_m": "first-price best-of-M",
    "segment_auction": "segment auction",
}
