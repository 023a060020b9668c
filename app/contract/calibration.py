"""Knowing what to bid (`POST /calibration`): `CalibrationRequest` and `CalibrationResponse`.

The request carries the candidate tables of test auctions as `POST /auction` returns them with
`include_candidates: true` (each `CandidateRecord` pastes in as it is), the scale each auction ran
the advertiser with, and the value scales to evaluate; solved by `app.campaigns.calibration`.
Bounds make every schema-valid body computable in float64 (|x| ≤ 1e8, s ≥ 1e-6, τ ≥ 0.01).
Imports pydantic and the other contract modules only; see docs/DESIGN.md § Layout.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from app.contract.request import _AS_INT, ADVERTISER_ID_PATTERN

AdvertiserId = Annotated[str, Field(pattern=ADVERTISER_ID_PATTERN)]
Bounded = Annotated[float, Field(ge=-1e8, le=1e8, allow_inf_nan=False)]
RunScale = Annotated[float, Field(ge=1e-6, le=1e3, allow_inf_nan=False)]
EvaluatedScale = Annotated[float, Field(ge=0, le=1e3, allow_inf_nan=False)]

MAX_CALIBRATION_AUCTIONS = 100
MAX_CALIBRATION_CANDIDATES = 256
MAX_CALIBRATION_SCALES = 64
# 1-2-5 steps from 0.001 to 1000: the default value scales of the curve.
DEFAULT_VALUE_SCALES = (*(m * 10.0**e for e in range(-3, 3) for m in (1, 2, 5)), 1000.0)


class CalibrationCandidate(BaseModel):
    """One candidate of a test auction: a `CandidateRecord` as `POST /auction` returns it (its text,
    probability, proposal, num_tokens and finish_reason are accepted and not used)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    log_ref: Bounded = Field(description="log π_ref(y_j | x).")
    log_proposal: Bounded = Field(description="log q(y_j), the density it was drawn from.")
    rewards: dict[str, Bounded] = Field(
        min_length=1, max_length=64, description="r_i(y_j) by advertiser id, as the auction ran."
    )
    text: str | None = None
    probability: float | None = None
    proposal: str | None = None
    num_tokens: Annotated[int, _AS_INT] | None = None
    finish_reason: str | None = None
    # issue 35: what a re-score needs (accepted, not used)
    token_ids: list[Annotated[int, Field(ge=0, lt=2**31), _AS_INT]] | None = Field(None, max_length=4096)
    log_context: dict[str, Bounded] | None = Field(None, max_length=64)


class CalibrationAuction(BaseModel):
    """One test auction: its τ, the value scale it ran the advertiser with, its candidates."""

    model_config = ConfigDict(extra="forbid", strict=True)

    tau: float = Field(ge=0.01, le=1e6, allow_inf_nan=False, description="The auction's τ.")
    value_scale: RunScale = Field(
        description="The advertiser's value scale in this auction (her rewards / it = log π_i − log π_ref)."
    )
    candidates: list[CalibrationCandidate] = Field(min_length=1, max_length=MAX_CALIBRATION_CANDIDATES)


class CalibrationRequest(BaseModel):
    """The advertiser, her test auctions, the value scales to evaluate and, optionally, a target."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "advertiser": "strummaster",
                    "auctions": [
                        {
                            "tau": 1.0,
                            "value_scale": 1.0,
                            "candidates": [
                                {"log_ref": -20.5, "log_proposal": -19.0, "rewards": {"strummaster": 0.5}},
                                {"log_ref": -22.0, "log_proposal": -18.5, "rewards": {"strummaster": 3.0}},
                            ],
                        }
                    ],
                    "value_scales": [0.01, 0.1, 1.0],
                    "target_cpm_micro": 5_000_000,
                }
            ]
        },
    )

    advertiser: AdvertiserId = Field(description="Whose cost: an id present in every candidate's rewards.")
    auctions: list[CalibrationAuction] = Field(min_length=1, max_length=MAX_CALIBRATION_AUCTIONS)
    value_scales: list[EvaluatedScale] | None = Field(
        None,
        min_length=1,
        max_length=MAX_CALIBRATION_SCALES,
        description="Value scales to evaluate, [0, 1000] (default: 1-2-5 steps from 0.001 to 1000).",
    )
    target_cpm_micro: Annotated[int, Field(ge=1, le=10**15), _AS_INT] | None = Field(
        None,
        description="Target cost per 1,000 auctions in micro-units: solve the value scale that meets it.",
    )


class CurvePointOut(BaseModel):
    value_scale: float
    cost_per_auction: float = Field(description="Expected payment per auction, currency units.")
    cost_per_1000: float = Field(description="Expected cost per 1,000 auctions, currency units.")
    cost_per_1000_micro: int = Field(description="The same, rounded to micro-units.")


class TargetSolution(BaseModel):
    target_cpm_micro: int
    value_scale: float = Field(description="The value scale that meets the target (1000 when not reached).")
    cost_per_1000_micro: int = Field(description="Cost per 1,000 at that value scale.")
    reached: bool = Field(description="False: no value scale ≤ 1000 costs as much as the target.")
    within_one_micro: bool = Field(description="|cost − target| ≤ 1 micro-unit per 1,000.")


class CalibrationResponse(BaseModel):
    """The curve (value scale → expected cost) on the given test auctions and the solved scale."""

    advertiser: str
    currency: str
    auctions: int = Field(description="How many test auctions the figures average over.")
    proposals: list[str] = Field(description="The proposals that drew the candidates (as given).")
    curve: list[CurvePointOut]
    target: TargetSolution | None = None
