"""`POST /calibration`: knowing what to bid — an advertiser's expected cost per auction and per 1,000
at any value scale, and the value scale that meets a target cost per 1,000, from test auctions'
candidate tables (`POST /auction` with `test: true, include_candidates: true`).

No model work, nothing stored or billed: the pure mechanism on the tables the caller sends
(`app.campaigns.calibration`), run off the event loop. A body the schema accepts but whose tables
contradict each other (the advertiser missing from a candidate's rewards, candidates of one auction
with different advertisers) is a 409 naming the field, as the what-if's. Imports the calibration
math, the contract's models, the gateway's dependencies and security; see docs/DESIGN.md § Layout.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Body, Depends, HTTPException
from fastapi.openapi.models import Example

from app.campaigns.calibration import (
    SampleAuction,
    ScaleSolution,
    cost_curve,
    solve_value_scale,
)
from app.contract.calibration import (
    DEFAULT_VALUE_SCALES,
    CalibrationRequest,
    CalibrationResponse,
    CurvePointOut,
    TargetSolution,
)
from app.gateway.deps import SettingsDep
from app.gateway.openapi import error_responses
from app.gateway.security import require_api_key
from app.gateway.strict_json import StrictJSONRoute

router = APIRouter(route_class=StrictJSONRoute)

_CONFLICT = error_responses(409)[409] | {
    "description": "The tables contradict each other, naming the field: the advertiser is missing from "
    "a candidate's rewards, or the candidates of one auction have different advertisers"
}


def sample_auctions(body: CalibrationRequest) -> list[SampleAuction]:
    """The request's tables as the calibration's arrays; HTTPException 409 naming the first field
    whose table contradicts the request or the rest of its auction."""
    auctions = []
    for index, auction in enumerate(body.auctions):
        ids = set(auction.candidates[0].rewards)
        for position, candidate in enumerate(auction.candidates):
            field = f"auctions[{index}].candidates[{position}].rewards"
            if body.advertiser not in candidate.rewards:
                raise HTTPException(409, f"{field}: advertiser {body.advertiser!r} has no reward here")
            if set(candidate.rewards) != ids:
                raise HTTPException(409, f"{field}: other advertisers than candidates[0]'s")
        columns = {key: [c.rewards[key] for c in auction.candidates] for key in sorted(ids)}
        auctions.append(
            SampleAuction.from_rewards(
                body.advertiser,
                auction.value_scale,
                auction.tau,
                [c.log_ref for c in auction.candidates],
                [c.log_proposal for c in auction.candidates],
                columns,
            )
        )
    return auctions


def calibrate(body: CalibrationRequest, currency: str) -> CalibrationResponse:
    """The curve at the requested (or default) value scales and, with a target, the solved scale."""
    auctions = sample_auctions(body)
    scales = sorted(set(body.value_scales or DEFAULT_VALUE_SCALES))
    curve = [
        CurvePointOut(
            value_scale=point.value_scale,
            cost_per_auction=point.cost_per_auction,
            cost_per_1000=point.cost_per_1000,
            cost_per_1000_micro=round(point.cost_per_1000_micro),
        )
        for point in cost_curve(auctions, scales)
    ]
    target = None
    if body.target_cpm_micro is not None:
        target = _target(solve_value_scale(auctions, float(body.target_cpm_micro)), body.target_cpm_micro)
    proposals = sorted({c.proposal for a in body.auctions for c in a.candidates if c.proposal is not None})
    return CalibrationResponse(
        advertiser=body.advertiser,
        currency=currency,
        auctions=len(auctions),
        proposals=proposals,
        curve=curve,
        target=target,
    )


def _target(solution: ScaleSolution, target_micro: int) -> TargetSolution:
    return TargetSolution(
        target_cpm_micro=target_micro,
        value_scale=solution.value_scale,
        cost_per_1000_micro=round(solution.cost_per_1000_micro),
        reached=solution.reached,
        within_one_micro=solution.within_tolerance,
    )


@router.post(
    "/calibration",
    response_model=CalibrationResponse,
    response_model_exclude_none=True,
    dependencies=[Depends(require_api_key)],
    tags=["auction"],
    summary="What to bid: expected cost per auction and per 1,000 by value scale, from test auctions",
    description="Send the candidate tables of test auctions (`POST /auction` with `test: true, "
    "include_candidates: true`: their `candidates` paste in as they are) with the value scale each ran "
    "the advertiser with. Answers her expected payment per auction and per 1,000 auctions at each "
    "value scale (the mechanism's own payments on those candidates: exact for them, whatever the "
    "proposal, since what is drawn never depends on a value scale) and, with `target_cpm_micro`, the "
    "value scale that meets it (bisection: the cost is non-decreasing in the value scale; when even "
    "1000 costs less, `reached: false` and the most it costs). No model work, nothing stored or billed.",
    responses={**error_responses(401, 413, 422), 409: _CONFLICT},
)
async def calibrate_value_scale(
    settings: SettingsDep,
    body: CalibrationRequest = Body(
        openapi_examples={
            "one auction": Example(
                summary="one test auction, three value scales, a target of 5.00 per 1,000",
                value=CalibrationRequest.model_config["json_schema_extra"]["examples"][0],  # type: ignore[index]
            )
        }
    ),
) -> CalibrationResponse:
    return await asyncio.to_thread(calibrate, body, settings.currency)
