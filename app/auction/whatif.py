"""What-if: resolve the pure mechanism again on a served auction's stored candidates (never billed).

`POST /auctions/{id}/resolve` takes a τ and, optionally, a subset of the advertisers and changed value
scales, and answers what the mechanism (`app.mechanism.allocation_and_payments`) decides on the SAME
candidates: allocation, payments, expected rewards and utilities, ESS. No model is called, nothing is
drawn, billed or stored (invariant: this module has no I/O at all; the route only reads the record).

Rewards with a changed value scale: r_i = s_i (log π_i − log π_ref), so r'_i = r_i · s'_i / s_i with
s_i the scale the auction was run with (its stored request). A subset keeps the stored order of the
advertisers; the candidates keep their stored q (they were drawn from it, whoever now takes part).
Imports the mechanism and the contract's models only (`app.contract.whatif`); see docs/DESIGN.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from app import mechanism
from app.contract.result import AdvertiserResult
from app.contract.whatif import WhatIfRequest, WhatIfResponse


class WhatIfInputError(ValueError):
    """The what-if names an advertiser the auction did not have: 409 naming the field and the id.

    409 (the body conflicts with this auction's state), not 422: the body is schema-valid (the OpenAPI
    document cannot list one auction's advertisers), and not 404: the auction exists."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


def _stored_scales(record: dict[str, Any]) -> dict[str, float]:
    stored = record.get("request", {}).get("advertisers", [])
    return {row["id"]: float(row.get("value_scale", 1.0)) for row in stored}


def resolve_record(record: dict[str, Any], request: WhatIfRequest) -> WhatIfResponse:
    """The mechanism on `record`'s candidates with the what-if's τ, advertisers and value scales."""
    all_ids = [row["id"] for row in record["advertisers"]]
    chosen = request.advertisers if request.advertisers is not None else all_ids
    for index, advertiser_id in enumerate(chosen):
        if advertiser_id not in all_ids:
            raise WhatIfInputError(
                ("advertisers", index),
                f"advertisers[{index}]: advertiser {advertiser_id!r} did not take part in this auction",
            )
    for advertiser_id in request.value_scales or {}:
        if advertiser_id not in all_ids:
            raise WhatIfInputError(
                ("value_scales", advertiser_id),
                f"value_scales[{advertiser_id!r}]: advertiser {advertiser_id!r} did not take part in "
                "this auction",
            )
    ids = [advertiser_id for advertiser_id in all_ids if advertiser_id in set(chosen)]
    candidates = record["candidates"]
    stored_scales = _stored_scales(record)
    new_scales = request.value_scales or {}
    rewards = np.array(
        [[float(c["rewards"][advertiser_id]) for c in candidates] for advertiser_id in ids], dtype=np.float64
    ).reshape(len(ids), len(candidates))
    for row, advertiser_id in enumerate(ids):
        if advertiser_id in new_scales:
            rewards[row] *= new_scales[advertiser_id] / stored_scales.get(advertiser_id, 1.0)
    log_ref = np.array([float(c["log_ref"]) for c in candidates], dtype=np.float64)
    log_proposal = np.array([float(c["log_proposal"]) for c in candidates], dtype=np.float64)
    probabilities, payments = mechanism.allocation_and_payments(rewards, log_ref, log_proposal, request.tau)
    utilities = mechanism.expected_utilities(rewards, log_ref, log_proposal, request.tau)
    expected_rewards = rewards @ probabilities
    return WhatIfResponse(
        auction_id=str(record["auction_id"]),
        tau=float(request.tau),
        currency=str(record.get("currency", "")),
        advertisers=[
            AdvertiserResult(
                id=advertiser_id,
                payment=float(payments[row]),
                expected_reward=float(expected_rewards[row]),
                expected_utility=float(utilities[row]),
            )
            for row, advertiser_id in enumerate(ids)
        ],
        probabilities=[float(p) for p in probabilities],
        revenue=float(np.add.reduce(payments)),
        effective_sample_size=mechanism.effective_sample_size(probabilities),
    )
