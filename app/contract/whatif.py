"""The what-if's body and answer (`POST /auctions/{id}/resolve`): `WhatIfRequest`, `WhatIfResponse`.

Resolved by `app.auction.whatif`. Imports pydantic and the other contract modules only; see
docs/DESIGN.md § Layout.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.contract.request import ADVERTISER_ID_PATTERN
from app.contract.result import AdvertiserResult

ValueScale = Annotated[float, Field(gt=0, le=1e3, allow_inf_nan=False)]
AdvertiserId = Annotated[str, Field(pattern=ADVERTISER_ID_PATTERN)]


class WhatIfRequest(BaseModel):
    """τ and, optionally, who takes part and with which value scale."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"tau": 2.0}, {"tau": 0.5, "value_scales": {"strummaster": 2.0}}]},
    )

    tau: float = Field(ge=0.01, le=1e6, allow_inf_nan=False, description="Weight on the user (τ).")
    advertisers: list[AdvertiserId] | None = Field(
        None,
        min_length=1,
        description="Resolve with only these advertisers (ids of the stored auction; default: all).",
        json_schema_extra={"uniqueItems": True},
    )
    value_scales: dict[str, ValueScale] | None = Field(
        None,
        description="New value scale s_i (0, 1000] by advertiser id (default: as the auction ran).",
    )

    @field_validator("advertisers")
    @classmethod
    def _unique(cls, advertisers: list[str] | None) -> list[str] | None:
        if advertisers is not None and len(set(advertisers)) != len(advertisers):
            raise ValueError("advertiser ids must be unique")
        return advertisers


class WhatIfResponse(BaseModel):
    """What the mechanism decides on the stored candidates under the what-if's τ and advertisers."""

    auction_id: str
    tau: float
    currency: str
    billed: bool = Field(False, description="Always false: a what-if is never billed nor stored.")
    advertisers: list[AdvertiserResult]
    probabilities: list[float] = Field(description="π_j by candidate, in the stored candidates' order.")
    revenue: float
    effective_sample_size: float
