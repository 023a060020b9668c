"""From cached candidates to one row per (instance, seed, proposal, M, mechanism): `mosaic compare`'s table.

Every mechanism sees the *same* candidates: the evaluation cache's unit, cut to its first M draws exactly
as `mosaic evaluate` does (`app.evaluation.rows.prefix_indices`), at the paper's τ for that number of
advertisers. Measured per row (expectations over the mechanism's allocation π, payments as charged):
revenue Σ p_i; reward gain Σ_i (E_π r_i − E_no-ads r_i) against the no-ads reply on the same candidates;
social welfare E_π W; user utility E_π log π_ref and its gap to the no-ads reply; ESS 1/Σ π_j²
(1 for a deterministic choice); how often the returned reply names an advertiser (E_π) and the share
of the M candidates that do (the same for every mechanism); the incentive gap
(`incentives.max_incentive_gap`); and the compute of one resolution (median µs). Imports `mechanisms`,
`incentives`, `app.mechanism` and `app.evaluation`.
See docs/DESIGN.md § Layout.
"""

from __future__ import annotations

import statistics
import time
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from app import mechanism
from app.comparison.incentives import max_incentive_gap
from app.comparison.mechanisms import MECHANISMS, CandidateSet, Mechanism, Outcome, no_ads
from app.evaluation import metrics
from app.evaluation.instances import Instance
from app.evaluation.rows import candidate_log_proposal, prefix_indices
from app.evaluation.units import UnitData

KEYS = ["model", "instance_id", "seed", "proposal", "M", "mechanism"]
COLUMNS = [
    *KEYS,
    "n_advertisers",
    "tau",
    "revenue",
    "reward_gain",
    "welfare",
    "user_log_ref",
    "user_gap",
    "ess",
    "candidates_named",
    "reply_named",
    "incentive_gap",
    "compute_us",
]
TIMING_REPEATS = 5


def candidate_set(data: UnitData, instance: Instance, m: int, tau: float | None = None) -> CandidateSet:
    """The first M candidates of a cached unit, as the mechanisms read them."""
    indices = prefix_indices(data, m)
    log_ref = data.log_ref[indices]
    rewards = mechanism.rewards_from_logprobs(
        data.log_advertisers[:, indices], log_ref, instance.value_scales
    )
    named = metrics.names_matrix([data.texts[j] for j in indices], instance.names)
    return CandidateSet(
        rewards=rewards,
        log_ref=log_ref,
        log_proposal=candidate_log_proposal(data, indices),
        tau=mechanism.default_tau(len(instance.names)) if tau is None else tau,
        num_tokens=np.asarray([data.num_tokens[j] for j in indices], dtype=np.int64),
        named=named,
    )


def _compute_us(resolve: Mechanism, candidates: CandidateSet) -> float:
    durations = []
    for _ in range(TIMING_REPEATS):
        started = time.perf_counter()
        resolve(candidates)
        durations.append(time.perf_counter() - started)
    return statistics.median(durations) * 1e6


def outcome_row(candidates: CandidateSet, outcome: Outcome, reference: Outcome) -> dict[str, float]:
    """The measures of one outcome against the no-ads outcome on the same candidates."""
    pi, pi_ref = outcome.probabilities, reference.probabilities
    rewards = candidates.rewards
    return {
        "revenue": float(outcome.payments.sum()),
        "reward_gain": float((rewards @ pi - rewards @ pi_ref).sum()),
        "welfare": float(candidates.welfare @ pi),
        "user_log_ref": float(candidates.log_ref @ pi),
        "user_gap": float(candidates.log_ref @ pi - candidates.log_ref @ pi_ref),
        "ess": float(1.0 / (pi @ pi)),
        "reply_named": float(candidates.named.any(axis=0) @ pi),
    }


def unit_rows(
    data: UnitData,
    instance: Instance,
    m_values: Sequence[int],
    *,
    mechanisms: Sequence[str] = tuple(MECHANISMS),
    optimise_evaluations: int = 200,
    tau: float | None = None,
) -> list[dict[str, Any]]:
    """Every mechanism's row for every M of one unit."""
    rows: list[dict[str, Any]] = []
    for m in sorted(set(m_values)):
        candidates = candidate_set(data, instance, m, tau)
        reference = no_ads(candidates)
        for name in mechanisms:
            resolve = MECHANISMS[name]
            # The search's noise: a function of the unit, M and mechanism only (a rerun is identical).
            rng = np.random.default_rng([data.unit_seed & 0xFFFFFFFF, m, zlib.crc32(name.encode())])
            rows.append(
                {
                    "model": data.model_name or "unknown",
                    "instance_id": instance.id,
                    "seed": data.seed,
                    "proposal": data.proposal,
                    "M": m,
                    "mechanism": name,
                    "n_advertisers": candidates.rewards.shape[0],
                    "tau": candidates.tau,
                    "candidates_named": float(candidates.named.any(axis=0).mean()),
                    **outcome_row(candidates, resolve(candidates), reference),
                    "incentive_gap": max_incentive_gap(
                        resolve, candidates, rng, optimise_evaluations=optimise_evaluations
                    ),
                    "compute_us": _compute_us(resolve, candidates),
                }
            )
    return rows


def build_frame(
    units: Sequence[tuple[UnitData, Instance]],
    m_values: Sequence[int],
    *,
    mechanisms: Sequence[str] = tuple(MECHANISMS),
    optimise_evaluations: int = 200,
    tau: float | None = None,
) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    for data, instance in units:
        rows += unit_rows(
            data,
            instance,
            m_values,
            mechanisms=mechanisms,
            optimise_evaluations=optimise_evaluations,
            tau=tau,
        )
    frame = pd.DataFrame.from_records(rows, columns=COLUMNS)
    return frame.sort_values(KEYS, kind="stable").reset_index(drop=True)
