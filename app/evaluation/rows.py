"""From scored candidates to rows: the pure part of `mosaic evaluate` (`app.mechanism` + `metrics`).

Smaller M reuse prefixes of the largest draw (`prefix_indices`): the candidates of one proposal are
i.i.d., so the first M of them are a draw of M; for ``mixture`` M's set is the first
``mixture_counts(M)`` of each pool and its ``log q`` the balance-heuristic mixture with that M's shares
(`candidate_log_proposal`). Per (τ, M) `unit_rows` resolves the auction with `app.mechanism.run_auction`
(a generator seeded from the unit seed, proposal, M and τ: `allocation_rng`) and `build_frames` gathers
the two tidy tables (`AUCTION_COLUMNS`, `ADVERTISER_COLUMNS`) with log π* centred per (instance, τ).
Without explicit τ values the grid is the paper's τ times `DEFAULT_TAU_MULTIPLIERS` (`tau_grid`).
Each row is built in named steps: the candidate set of one M (`_candidate_set`), its auction at one τ
(`_resolve`), then the auction row and the advertiser rows. Imports `metrics`, `instances`, `units`,
`app.mechanism` (and `app.auction.sampler.mixture_counts`, lazily); the layout: docs/DESIGN.md § Layout.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from app import mechanism
from app.evaluation import metrics
from app.evaluation.instances import Instance
from app.evaluation.units import UnitData

DEFAULT_TAU_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)

# Key columns of the two tables, in order.
AUCTION_KEYS = ["instance_id", "seed", "proposal", "tau", "M"]
ADVERTISER_KEYS = [*AUCTION_KEYS, "advertiser_index"]

AUCTION_COLUMNS = [
    *AUCTION_KEYS,
    "tau_multiplier",
    "primary_tau",
    "n_advertisers",
    "chosen_index",
    "chosen_num_tokens",
    "chosen_finish_reason",
    "log_target_chosen",
    "log_target_expected",
    "log_target_chosen_centred",
    "log_target_expected_centred",
    "log_ref_chosen",
    "log_ref_expected",
    "welfare_chosen",
    "welfare_expected",
    "total_expected_reward",
    "total_reward_gain",
    "total_reward_gain_approx",
    "revenue",
    "revenue_without_offset",
    "total_utility_gain",
    "total_utility_gain_without_offset",
    "total_utility_gain_approx",
    "total_utility_gain_approx_without_offset",
    "ess",
    "ess_fraction",
    "fraction_named_chosen",
    "fraction_named_expected",
    "fraction_named_candidates",
]

ADVERTISER_COLUMNS = [
    *ADVERTISER_KEYS,
    "tau_multiplier",
    "primary_tau",
    "advertiser_id",
    "advertiser_name",
    "value_scale",
    "expected_reward",
    "counterfactual_reward",
    "counterfactual_reward_approx",
    "reward_gain",
    "reward_gain_approx",
    "expected_utility",
    "payment",
    "payment_without_offset",
    "utility_gain",
    "utility_gain_without_offset",
    "utility_gain_approx",
    "utility_gain_approx_without_offset",
    "named_chosen",
    "named_expected",
    "named_candidates_fraction",
]


@dataclass(frozen=True)
class TauSetting:
    tau: float
    multiplier: float  # τ / default_tau(n)
    primary: bool  # the τ of the figures against M


def tau_grid(num_advertisers: int, taus: Sequence[float] | None) -> list[TauSetting]:
    paper = mechanism.default_tau(num_advertisers)
    if taus is None:
        return [TauSetting(paper * k, k, k == 1.0) for k in DEFAULT_TAU_MULTIPLIERS]
    return [TauSetting(float(t), float(t) / paper, index == 0) for index, t in enumerate(taus)]


def mixture_counts(num_candidates: int, context_share: float) -> tuple[int, int]:
    """The service's (context, reference) split of M mixture draws (`app.auction.sampler.mixture_counts`)."""
    from app.auction.sampler import mixture_counts as service_mixture_counts

    return service_mixture_counts(num_candidates, context_share)


def prefix_indices(data: UnitData, m: int) -> np.ndarray:
    """Indices of the candidate set of M: the first M draws, or for the mixture the first
    ``mixture_counts(M)`` of each pool (context pool, then reference pool, as the service orders them)."""
    if m < 1 or m > data.num_candidates:
        raise ValueError(f"M={m} outside 1..{data.num_candidates} (the cached draw)")
    if data.proposal != "mixture":
        return np.arange(m)
    from_context, from_reference = mixture_counts(m, float(data.config["mixture_context_share"]))
    context_pool = [j for j, source in enumerate(data.sources) if source == "context"]
    reference_pool = [j for j, source in enumerate(data.sources) if source == "reference"]
    if len(context_pool) < from_context or len(reference_pool) < from_reference:
        raise ValueError(f"the cached mixture pools are too small for M={m}")
    return np.array(context_pool[:from_context] + reference_pool[:from_reference], dtype=np.intp)


def candidate_log_proposal(data: UnitData, indices: np.ndarray) -> np.ndarray:
    """log q of the prefix: the sampled density, or the mixture of the prefix's own shares."""
    if data.proposal != "mixture":
        result: np.ndarray = data.log_proposal[indices]
        return result
    if data.log_context is None:
        raise ValueError("a mixture unit needs the context-prompt scores")
    sources = [data.sources[j] for j in indices]
    share = sources.count("context") / len(sources)
    components = np.stack([data.log_context[indices], data.log_ref[indices]])
    return mechanism.mixture_log_proposal(components, np.array([share, 1.0 - share]))


def allocation_rng(unit_seed: int, proposal: str, m: int, tau: float) -> np.random.Generator:
    """The draw's generator: a function of the unit seed, proposal, M and τ only."""
    entropy = [
        unit_seed & 0xFFFFFFFF,
        unit_seed >> 32,
        zlib.crc32(proposal.encode("utf-8")),
        m,
        round(tau * 1_000_000),
    ]
    return np.random.default_rng(np.random.SeedSequence(entropy))


@dataclass(frozen=True)
class _CandidateSet:
    """The candidates of one M (a prefix of the unit's draw) and what every τ shares on them."""

    m: int
    indices: np.ndarray  # positions in the unit's draw
    log_ref: np.ndarray
    log_proposal: np.ndarray
    rewards: np.ndarray  # (n, M)
    named: np.ndarray  # (n, M): candidate j names advertiser i
    named_fraction: np.ndarray  # (M,): the share of the advertisers each candidate names
    approx_cf: np.ndarray  # the paper's counterfactual rewards (n,)


@dataclass(frozen=True)
class _Resolved:
    """One (M, τ) auction on a candidate set and the measures its rows report."""

    outcome: mechanism.AuctionOutcome
    log_target: np.ndarray
    welfare: np.ndarray
    payments_no_offset: np.ndarray
    exact_cf: np.ndarray
    gain: np.ndarray
    gain_approx: np.ndarray
    utility: np.ndarray
    utility_no_offset: np.ndarray
    utility_approx: np.ndarray
    utility_approx_no_offset: np.ndarray


def unit_rows(
    data: UnitData, instance: Instance, m_values: Sequence[int], taus: Sequence[float] | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Auction rows and advertiser rows of one unit, for every (τ, M)."""
    n = len(instance.names)
    if data.log_advertisers.shape[0] != n:
        raise ValueError(f"cache of instance {instance.id} has {data.log_advertisers.shape[0]} advertisers")
    named_all = metrics.names_matrix(data.texts, instance.names)
    auction_rows: list[dict[str, Any]] = []
    advertiser_rows: list[dict[str, Any]] = []
    for m in sorted(set(m_values)):
        candidates = _candidate_set(data, instance, named_all, m)
        for setting in tau_grid(n, taus):
            resolved = _resolve(data, candidates, setting.tau)
            key = {
                "instance_id": instance.id,
                "seed": data.seed,
                "proposal": data.proposal,
                "tau": setting.tau,
                "M": m,
                "tau_multiplier": setting.multiplier,
                "primary_tau": setting.primary,
            }
            auction_rows.append(_auction_row(key, data, n, candidates, resolved))
            advertiser_rows += _advertiser_rows(key, instance, candidates, resolved)
    return auction_rows, advertiser_rows


def _candidate_set(data: UnitData, instance: Instance, named_all: np.ndarray, m: int) -> _CandidateSet:
    indices = prefix_indices(data, m)
    log_ref = data.log_ref[indices]
    rewards = mechanism.rewards_from_logprobs(
        data.log_advertisers[:, indices], log_ref, instance.value_scales
    )
    named = named_all[:, indices]
    return _CandidateSet(
        m=m,
        indices=indices,
        log_ref=log_ref,
        log_proposal=candidate_log_proposal(data, indices),
        rewards=rewards,
        named=named,
        named_fraction=named.mean(axis=0),
        approx_cf=metrics.approximate_counterfactual_rewards(rewards, named),
    )


def _resolve(data: UnitData, candidates: _CandidateSet, tau: float) -> _Resolved:
    """The auction at τ (its draw seeded by `allocation_rng`) and its gains, with and without the
    offset, against the exact and the paper's counterfactual."""
    rewards, log_ref, log_proposal = candidates.rewards, candidates.log_ref, candidates.log_proposal
    rng = allocation_rng(data.unit_seed, data.proposal, candidates.m, tau)
    outcome = mechanism.run_auction(rewards, log_ref, log_proposal, tau, rng)
    payments_no_offset = mechanism.payments_without_offset(rewards, log_ref, log_proposal, tau)
    exact_cf = metrics.counterfactual_rewards(rewards, log_ref, log_proposal, tau)
    gain = metrics.reward_gain(outcome.expected_rewards, exact_cf)
    gain_approx = metrics.reward_gain(outcome.expected_rewards, candidates.approx_cf)
    return _Resolved(
        outcome=outcome,
        log_target=mechanism.log_target_unnormalised(rewards, log_ref, tau),
        welfare=mechanism.social_welfare(rewards, log_ref, tau),
        payments_no_offset=payments_no_offset,
        exact_cf=exact_cf,
        gain=gain,
        gain_approx=gain_approx,
        utility=metrics.utility_gain(gain, outcome.payments),
        utility_no_offset=metrics.utility_gain(gain, payments_no_offset),
        utility_approx=metrics.utility_gain(gain_approx, outcome.payments),
        utility_approx_no_offset=metrics.utility_gain(gain_approx, payments_no_offset),
    )


def _auction_row(
    key: dict[str, Any], data: UnitData, n: int, candidates: _CandidateSet, resolved: _Resolved
) -> dict[str, Any]:
    outcome, named = resolved.outcome, candidates.named
    pi = outcome.probabilities
    chosen = outcome.chosen_index
    original_index = int(candidates.indices[chosen])
    return {
        **key,
        "n_advertisers": n,
        "chosen_index": chosen,
        "chosen_num_tokens": data.num_tokens[original_index],
        "chosen_finish_reason": data.finish_reasons[original_index],
        "log_target_chosen": float(resolved.log_target[chosen]),
        "log_target_expected": metrics.expectation(pi, resolved.log_target),
        "log_ref_chosen": float(candidates.log_ref[chosen]),
        "log_ref_expected": metrics.expectation(pi, candidates.log_ref),
        "welfare_chosen": float(resolved.welfare[chosen]),
        "welfare_expected": metrics.expectation(pi, resolved.welfare),
        "total_expected_reward": float(outcome.expected_rewards.sum()),
        "total_reward_gain": float(resolved.gain.sum()),
        "total_reward_gain_approx": float(resolved.gain_approx.sum()),
        "revenue": float(outcome.revenue),
        "revenue_without_offset": float(resolved.payments_no_offset.sum()),
        "total_utility_gain": float(resolved.utility.sum()),
        "total_utility_gain_without_offset": float(resolved.utility_no_offset.sum()),
        "total_utility_gain_approx": float(resolved.utility_approx.sum()),
        "total_utility_gain_approx_without_offset": float(resolved.utility_approx_no_offset.sum()),
        "ess": float(outcome.effective_sample_size),
        "ess_fraction": float(outcome.effective_sample_size) / candidates.m,
        "fraction_named_chosen": float(named[:, chosen].mean()),
        "fraction_named_expected": metrics.expectation(pi, candidates.named_fraction),
        "fraction_named_candidates": float(named.mean()),
    }


def _advertiser_rows(
    key: dict[str, Any], instance: Instance, candidates: _CandidateSet, resolved: _Resolved
) -> list[dict[str, Any]]:
    outcome, named = resolved.outcome, candidates.named
    names, scales = instance.names, instance.value_scales
    chosen = outcome.chosen_index
    named_expected = named.astype(np.float64) @ outcome.probabilities  # (n,)
    return [
        {
            **key,
            "advertiser_index": i,
            "advertiser_id": str(advertiser["id"]),
            "advertiser_name": names[i],
            "value_scale": float(scales[i]),
            "expected_reward": float(outcome.expected_rewards[i]),
            "counterfactual_reward": float(resolved.exact_cf[i]),
            "counterfactual_reward_approx": float(candidates.approx_cf[i]),
            "reward_gain": float(resolved.gain[i]),
            "reward_gain_approx": float(resolved.gain_approx[i]),
            "expected_utility": float(outcome.expected_utilities[i]),
            "payment": float(outcome.payments[i]),
            "payment_without_offset": float(resolved.payments_no_offset[i]),
            "utility_gain": float(resolved.utility[i]),
            "utility_gain_without_offset": float(resolved.utility_no_offset[i]),
            "utility_gain_approx": float(resolved.utility_approx[i]),
            "utility_gain_approx_without_offset": float(resolved.utility_approx_no_offset[i]),
            "named_chosen": bool(named[i, chosen]),
            "named_expected": float(named_expected[i]),
            "named_candidates_fraction": float(named[i].mean()),
        }
        for i, advertiser in enumerate(instance.advertisers)
    ]


def build_frames(
    units: Sequence[tuple[UnitData, Instance]], m_values: Sequence[int], taus: Sequence[float] | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two tidy tables, sorted by their keys, with log π* centred per (instance, τ)."""
    auction_rows: list[dict[str, Any]] = []
    advertiser_rows: list[dict[str, Any]] = []
    for data, instance in units:
        auctions, advertisers = unit_rows(data, instance, m_values, taus)
        auction_rows.extend(auctions)
        advertiser_rows.extend(advertisers)
    auctions_frame = pd.DataFrame.from_records(auction_rows)
    # The normaliser of π* is unknown and differs per instance (and per τ: π* depends on τ), so
    # log π* is reported centred: minus its mean over all rows of that (instance, τ) — seeds,
    # proposals and M alike — which keeps every comparison within an instance.
    group = ["instance_id", "tau"]
    for column in ("log_target_chosen", "log_target_expected"):
        auctions_frame[f"{column}_centred"] = metrics.centre_by_group(auctions_frame, column, group)
    auctions_frame = auctions_frame[AUCTION_COLUMNS].sort_values(AUCTION_KEYS, kind="stable")
    advertisers_frame = pd.DataFrame.from_records(advertiser_rows)[ADVERTISER_COLUMNS]
    advertisers_frame = advertisers_frame.sort_values(ADVERTISER_KEYS, kind="stable")
    return auctions_frame.reset_index(drop=True), advertisers_frame.reset_index(drop=True)
