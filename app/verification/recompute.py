"""Allocation and payments recomputed from a record (or a sealed view) by `app.mechanism`.

Job: the checks that the platform ran the announced mechanism on the stored candidates — from the
record's rewards r_i(y_j), log π_ref, log q and τ, `app.mechanism.allocation_and_payments` gives π_j,
each p_i, and with them R_i, U_i, the revenue and the effective sample size, each compared with what
the record states to `TOLERANCE` (1e-9, absolute or relative to the larger value); the reply must be
the chosen candidate's text, and each billed micro-unit amount its payment rounded. From a sealed
view the same from what is committed (her reward and the others' sum per candidate: her payment,
reward and utility, and every π_j). A failed check names the field and both values, and the τ it
used. No I/O. Imports numpy, `app.mechanism` and the report's types only; see docs/DESIGN.md
§ Verifiable auctions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

import numpy as np

from app import mechanism
from app.auction.engine_answers import derive_seed
from app.auction.sampler import SEED_ALLOCATION
from app.verification.report import Check

TOLERANCE = 1e-9


def agrees(stored: Any, recomputed: float) -> bool:
    """Within TOLERANCE: absolute below 1, relative above (a payment of 25.93 agrees to 2.6e-8)."""
    if not isinstance(stored, int | float) or isinstance(stored, bool):
        return False
    return abs(float(stored) - recomputed) <= TOLERANCE * max(1.0, abs(float(stored)), abs(recomputed))


def _compare(name: str, pairs: list[tuple[str, Any, float]], what: str) -> Check:
    wrong = [
        f"{field}: stored {stored!r}, recomputed {value!r}"
        for field, stored, value in pairs
        if not agrees(stored, value)
    ]
    if wrong:
        more = f"; and {len(wrong) - 4} more" if len(wrong) > 4 else ""
        return Check(name, False, f"{'; '.join(wrong[:4])}{more} ({what})")
    return Check(name, True, f"{len(pairs)} values agree to {TOLERANCE:g} ({what})")


@dataclass(frozen=True)
class Recomputed:
    """What `app.mechanism` decides on the candidates from these rewards (n rows) and τ."""

    tau: float
    rewards: np.ndarray  # (n, M)
    probabilities: np.ndarray  # (M,)
    payments: np.ndarray  # (n,)
    utilities: np.ndarray  # (n,)

    def allocation(self, rows: list[dict[str, Any]]) -> list[tuple[str, Any, float]]:
        """Each candidate's stored π_j beside the recomputed one."""
        return [
            (f"candidates[{j}].probability", row.get("probability"), float(self.probabilities[j]))
            for j, row in enumerate(rows)
        ]

    def figures(self, row: int, stored: Mapping[str, Any], name: str) -> list[tuple[str, Any, float]]:
        """Row `row`'s stored payment, R_i and U_i (in `stored`) beside the recomputed ones."""
        return [
            (f"{name}.payment", stored.get("payment"), float(self.payments[row])),
            (
                f"{name}.expected_reward",
                stored.get("expected_reward"),
                float(self.rewards[row] @ self.probabilities),
            ),
            (f"{name}.expected_utility", stored.get("expected_utility"), float(self.utilities[row])),
        ]


def recompute(rows: list[dict[str, Any]], rewards: Any, tau: Any) -> Recomputed:
    """The mechanism on the candidates' log π_ref and log q; KeyError/TypeError/ValueError when the
    document lacks a value or holds one that is not a number."""
    log_ref = np.array([float(row["log_ref"]) for row in rows], dtype=np.float64)
    log_proposal = np.array([float(row["log_proposal"]) for row in rows], dtype=np.float64)
    matrix = np.array(rewards, dtype=np.float64).reshape(-1, len(rows))
    probabilities, payments = mechanism.allocation_and_payments(matrix, log_ref, log_proposal, float(tau))
    utilities = mechanism.expected_utilities(matrix, log_ref, log_proposal, float(tau))
    return Recomputed(float(tau), matrix, probabilities, payments, utilities)


def record_recompute(record: Mapping[str, Any]) -> list[Check]:
    """π, the payments, R_i, U_i, the revenue, the ESS, the reply and the micro-units of a full record."""
    rows: list[dict[str, Any]] = list(record.get("candidates") or [])
    outcome: list[dict[str, Any]] = list(record.get("advertisers") or [])
    if record.get("no_fill"):
        return [no_fill_check(record)]
    if not rows:
        return [Check("allocation", False, "the record has no candidates to recompute from")]
    try:
        ids = [str(row["id"]) for row in outcome]
        found = recompute(
            rows, [[float(row["rewards"][aid]) for row in rows] for aid in ids], record.get("tau")
        )
    except (KeyError, TypeError, ValueError) as error:
        return [
            Check("allocation", False, f"cannot recompute from the record: {type(error).__name__}: {error}")
        ]
    what = f"τ = {found.tau!r}, M = {len(rows)}, n = {len(ids)}"
    ess = mechanism.effective_sample_size(found.probabilities)
    allocation = [
        *found.allocation(rows),
        ("effective_sample_size", record.get("effective_sample_size"), ess),
    ]
    figures = [
        pair for i, row in enumerate(outcome) for pair in found.figures(i, row, f"advertisers[{row['id']!r}]")
    ]
    figures.append(("revenue", record.get("revenue"), float(np.add.reduce(found.payments))))
    return [
        tau_check(record, len(ids)),
        _compare("allocation", allocation, what),
        _compare("payments", figures, what),
        reply_check(record),
        micro_check(record),
    ]


def no_fill_check(record: Mapping[str, Any]) -> Check:
    """A no-fill (nobody bid: one organic reply, no mechanism): nobody charged, nothing billed."""
    charged = [str(row.get("id")) for row in record.get("advertisers") or []]
    if charged or record.get("payments_micro") or record.get("revenue") != 0:
        return Check(
            "payments",
            False,
            f"a no-fill charges nobody: advertisers {charged}, payments_micro "
            f"{record.get('payments_micro')!r}, revenue {record.get('revenue')!r}",
        )
    return Check(
        "payments", True, f"a no-fill ({record['no_fill'].get('reason')}): nobody bid, nothing billed"
    )


def tau_check(shown: Mapping[str, Any], bidders: int | None) -> Check:
    """τ is the one the request asked for, or the default for its bidders (n ≤ 2: 1, else n/2)."""
    request: Mapping[str, Any] = shown.get("request") or {}
    asked = request.get("tau")
    if asked is None and bidders is None:
        return Check("tau", True, f"τ = {shown.get('tau')!r} (the default; the bidders are sealed)")
    if asked is None:
        asked = mechanism.default_tau(bidders) if bidders else 1.0
    if not agrees(shown.get("tau"), float(asked)):
        return Check("tau", False, f"tau: the record says {shown.get('tau')!r}, the request {asked!r}")
    return Check("tau", True, f"τ = {asked!r} as requested (or the default for {bidders} bidders)")


def reply_check(shown: Mapping[str, Any]) -> Check:
    """The reply is the chosen candidate's text, and the chosen candidate is the one the auction's seed
    draws from the signed allocation (the mechanism's one uniform, from the generator of
    derive_seed(seed, SEED_ALLOCATION): the same draw as `app.mechanism.run_auction`'s)."""
    rows, index = list(shown.get("candidates") or []), shown.get("chosen_index")
    if not isinstance(index, int) or not 0 <= index < len(rows):
        return Check("reply", False, f"chosen_index {index!r} is not one of the {len(rows)} candidates")
    if rows[index].get("text") != shown.get("reply"):
        return Check("reply", False, f"the reply is not candidates[{index}].text, the chosen candidate's")
    drawn = _drawn_index(shown.get("seed"), [row.get("probability") for row in rows])
    if drawn is None:
        return Check(
            "reply", False, "the seed or the probabilities cannot be read: the draw cannot be replayed"
        )
    if drawn != index:
        return Check(
            "reply",
            False,
            f"chosen_index {index}, but the seed draws candidates[{drawn}] from the allocation",
        )
    return Check("reply", True, f"the reply is candidates[{index}], the one the seed draws")


def _drawn_index(seed: Any, probabilities: list[Any]) -> int | None:
    """The candidate the auction's seed draws from `probabilities` (None: not numbers)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        return None
    try:
        weights = np.array([float(p) for p in probabilities], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if weights.size == 0 or not np.all(np.isfinite(weights)) or weights.min() < 0 or weights.sum() <= 0:
        return None
    rng = np.random.default_rng(derive_seed(seed, SEED_ALLOCATION))
    return mechanism.draw_index(weights, rng)


def _micro(amount: Any) -> int | None:
    """`amount` in micro-units as the ledger rounds it (its repr's decimal, half to even); None: NaN."""
    try:
        exact = Decimal(repr(float(amount))).scaleb(6)
        return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
    except (InvalidOperation, TypeError, ValueError, OverflowError):
        return None


def micro_check(record: Mapping[str, Any]) -> Check:
    """Each billed amount in micro-units is its payment rounded as the ledger rounds it."""
    billed: Mapping[str, Any] = record.get("payments_micro") or {}
    payments = {str(row.get("id")): row.get("payment") for row in record.get("advertisers") or []}
    wrong = [
        f"payments_micro[{aid!r}]: {micro!r} for a payment of {payments.get(aid)!r}"
        for aid, micro in billed.items()
        if aid not in payments or micro != _micro(payments[aid])
    ]
    if wrong:
        return Check("payments_micro", False, "; ".join(wrong))
    return Check("payments_micro", True, f"{len(billed)} billed amounts are their payments in micro-units")


def view_recompute(attestation: Mapping[str, Any]) -> list[Check]:
    """From her committed part and the shared part: π_j and her payment, reward and utility."""
    shared: Mapping[str, Any] = attestation.get("shared") or {}
    part: Mapping[str, Any] = attestation.get("part") or {}
    rows: list[dict[str, Any]] = list(shared.get("candidates") or [])
    try:
        found = recompute(rows, [part["reward"], part["others_reward"]], shared.get("tau"))
    except (KeyError, TypeError, ValueError) as error:
        return [
            Check("allocation", False, f"cannot recompute from the view: {type(error).__name__}: {error}")
        ]
    what = f"τ = {found.tau!r}, M = {len(rows)}, her reward and the others' sum"
    return [
        tau_check(shared, None),
        _compare("allocation", found.allocation(rows), what),
        _compare("payments", found.figures(0, part.get("result") or {}, "advertiser"), what),
        reply_check(shared),
    ]
