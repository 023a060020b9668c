"""The body of `POST /auction`: `AuctionRequest` and its advertisers (`AdvertiserIn`), static bounds.

Static bounds live on the fields; the limits that are settings are `app.contract.limits`'. Imports
pydantic and the pure `app.prompts` (a text that renders to nothing is refused here) only; see
docs/DESIGN.md § Layout.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from app.prompts import AdvertiserProfile, advertiser_messages, context_messages, reference_messages

ProposalName = Literal["context", "reference", "mixture"]

MAX_SEED = 2**53 - 1


def _integral_number(value: Any) -> Any:
    # JSON has one number type: 2.0 is the integer 2 (JSON Schema counts it as "integer" too). Strict
    # still refuses 2.5, true and "2".
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


_AS_INT = BeforeValidator(_integral_number)  # last in Annotated, so the bounds stay in the schema

ADVERTISER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
# An opaque user or session id (a platform's own, hashed or not): the service keeps only its SHA-256.
USER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-:@+/=]{0,127}$"
MAX_BCAT = 50
MAX_BADV = 100
CategoryId = Annotated[str, Field(pattern=ADVERTISER_ID_PATTERN)]
OwnerId = Annotated[str, Field(pattern=ADVERTISER_ID_PATTERN)]


class AdvertiserIn(BaseModel):
    # strict: JSON types as they are (no true → 1, no "2" → 2, no "yes" → True).
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, strict=True)

    id: str = Field(
        pattern=ADVERTISER_ID_PATTERN,
        description="Stable account id (letters, digits, '_', '.', '-'; at most 64).",
        examples=["strummaster"],
    )
    name: str = Field(min_length=1, description="Name the reply may mention.", examples=["StrumMaster"])
    description: str = Field(
        min_length=1,
        description="What the advertiser offers, in a few words.",
        examples=["selling guitars, tuners and lessons for beginners"],
    )
    instruction: str | None = Field(
        None,
        min_length=1,
        description="System prompt defining the advertiser's LLM π_i; default: "
        "'Answer the question advertising <name>, <description>.'",
    )
    value_scale: float = Field(
        1.0, gt=0, le=1e3, allow_inf_nan=False, description="s_i: money per nat of log-likelihood ratio."
    )

    @model_validator(mode="after")
    def _renders(self) -> AdvertiserIn:
        # The prompts neutralise template control sequences; text with nothing left is refused here
        # (422) rather than failing later inside the auction.
        profile = self.profile()
        advertiser_messages("query", profile)
        context_messages("query", [profile])
        return self

    def profile(self) -> AdvertiserProfile:
        """What the prompts need of this advertiser (its value scale is the mechanism's, not theirs)."""
        return AdvertiserProfile(name=self.name, description=self.description, instruction=self.instruction)


class SelectionIn(BaseModel):
    """`select`: the service picks up to `max` relevant active campaigns for the query."""

    model_config = ConfigDict(extra="forbid", strict=True)

    max: Annotated[int, Field(ge=1), _AS_INT] = Field(
        description="Most campaigns selected (inline advertisers plus `max` at most MAX_ADVERTISERS).",
        examples=[3],
    )
    min_relevance: float | None = Field(
        None,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="Cosine relevance a campaign needs (overrides SELECTION_MIN_RELEVANCE for this request).",
    )


class RegsIn(BaseModel):
    """Regulations and consent (OpenRTB `regs`): any of them turns ads off (a no-fill, `no_consent`)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    coppa: bool = Field(False, description="Child-directed (OpenRTB regs.coppa): no ads.")
    minor: bool = Field(False, description="The user is under 18: no ads.")
    ads_consent: bool = Field(True, description="The user consented to ads; false: no ads.")

    def no_ads(self) -> str | None:
        """Which flag turns ads off (None: ads allowed)."""
        if self.coppa:
            return "regs.coppa is true (child-directed)"
        if self.minor:
            return "regs.minor is true (the user is under 18)"
        if not self.ads_consent:
            return "regs.ads_consent is false"
        return None


def _unique(values: list[str], what: str) -> list[str]:
    if len(set(values)) != len(values):
        raise ValueError(f"{what} must be unique")
    return values


class AuctionRequest(BaseModel):
    # strict: JSON types as they are (no true → 1, no "2" → 2, no "yes" → True). The schema also says
    # the cross-field rules: mixture only at temperature 1, top_p 1 (`_mixture_needs_raw_sampling`), and
    # at least one advertiser, campaign or selection (`_unique_ids`), not `campaigns` and `select` both.
    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        strict=True,
        json_schema_extra={
            "allOf": [
                {
                    "anyOf": [
                        {"not": {"properties": {"proposal": {"const": "mixture"}}, "required": ["proposal"]}},
                        {"properties": {"temperature": {"const": 1}, "top_p": {"const": 1}}},
                    ]
                },
                {  # someone bids: inline advertisers, campaigns, a selection, or some of them
                    "anyOf": [
                        {"properties": {"advertisers": {"minItems": 1}}, "required": ["advertisers"]},
                        {"properties": {"campaigns": {"minItems": 1}}, "required": ["campaigns"]},
                        {"properties": {"select": {"type": "object"}}, "required": ["select"]},
                    ]
                },
                {  # one way of naming campaigns: by id or by selection
                    "not": {
                        "properties": {"campaigns": {"minItems": 1}, "select": {"type": "object"}},
                        "required": ["campaigns", "select"],
                    }
                },
            ]
        },
    )

    query: str = Field(
        min_length=1, description="The user's query.", examples=["Learning to play the guitar."]
    )
    campaigns: list[Annotated[str, Field(pattern=ADVERTISER_ID_PATTERN)]] = Field(
        default_factory=list,
        description="Registered campaigns (`/campaigns`) to enter, by id (unique). One campaign per owner: "
        "a second one of an owner already in the auction is left out (`excluded`, reason `same_owner`), as "
        "are campaigns paused, archived, outside their schedule or out of budget.",
        json_schema_extra={"uniqueItems": True},
    )
    select: SelectionIn | None = Field(
        None,
        description="Let the service pick up to `max` relevant active campaigns for the query (instead of "
        "`campaigns`; beside inline `advertisers`). None relevant, or ads turned off: a no-fill reply.",
    )
    advertisers: list[AdvertiserIn] = Field(
        default_factory=list,
        validate_default=True,  # an absent list is checked too: someone must bid
        description="The advertisers in this auction, given inline (ids unique). At least one of "
        "`advertisers`, `campaigns` and `select` is given.",
        json_schema_extra={"uniqueItems": True},
    )
    user_id: str | None = Field(
        None,
        pattern=USER_ID_PATTERN,
        description="An opaque user or session id (at most 128 characters; only its SHA-256 is kept): "
        "campaign frequency caps count per (campaign, user_id). Without it caps do not apply.",
        examples=["u-5f2a9c"],
    )
    regs: RegsIn = Field(
        default_factory=RegsIn, description="Regulations and consent: coppa, minor or no consent: no ads."
    )
    bcat: list[CategoryId] = Field(
        default_factory=list,
        max_length=MAX_BCAT,
        description="Blocked content categories (OpenRTB bcat, unique): campaigns in one are left out.",
        json_schema_extra={"uniqueItems": True},
    )
    badv: list[OwnerId] = Field(
        default_factory=list,
        max_length=MAX_BADV,
        description="Blocked advertisers (OpenRTB badv: owner ids, unique): their campaigns are left out.",
        json_schema_extra={"uniqueItems": True},
    )
    tau: float | None = Field(
        None,
        ge=0.01,
        le=1e6,
        allow_inf_nan=False,
        description="Weight on the user (τ). Default: 1 for ≤ 2 advertisers, n/2 above (the paper).",
    )
    candidates: Annotated[int, Field(ge=1), _AS_INT] | None = Field(
        None, description="M, the number of candidate replies."
    )
    proposal: ProposalName = Field("context", description="Where candidates are drawn from.")
    max_tokens: Annotated[int, Field(ge=1), _AS_INT] | None = Field(
        None, description="Longest reply, in tokens."
    )
    temperature: float = Field(1.0, gt=0, le=2, allow_inf_nan=False, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False, description="Nucleus sampling mass.")
    # At most 2^53 - 1: JSON numbers beyond it are not interoperable (RFC 8259 §6; a JavaScript client
    # would round a 63-bit seed and could never replay the auction).
    seed: Annotated[int, Field(ge=0, le=MAX_SEED), _AS_INT] | None = Field(
        None, description="Seed (0 … 2^53 − 1): the same seed replays the auction."
    )
    include_candidates: bool = Field(False, description="Return the candidate table (for audits).")
    test: bool = Field(
        False,
        description="A test auction (OpenRTB `test=1`): run in full, its record flagged, never billed, "
        "not counted in revenue metrics.",
    )
    tmax_ms: Annotated[int, Field(ge=1), _AS_INT] | None = Field(
        None,
        description="This auction's own deadline in ms (at most AUCTION_DEADLINE_S); past it: 504, "
        "nothing billed.",
        examples=[60000],  # what Swagger's "Try it out" sends: a deadline an auction can meet
    )

    @field_validator("query")
    @classmethod
    def _query_renders(cls, query: str) -> str:
        reference_messages(query)
        return query

    @field_validator("advertisers")
    @classmethod
    def _unique_ids(cls, advertisers: list[AdvertiserIn], info: ValidationInfo) -> list[AdvertiserIn]:
        # `campaigns` and `select` come first, so they are in info.data here (absent when refused).
        nobody = info.data.get("campaigns", [None]) == [] and info.data.get("select", False) is None
        if not advertisers and nobody:
            raise ValueError(
                "give at least one advertiser (`advertisers`), campaign (`campaigns`) or `select`"
            )
        seen: set[str] = set()
        for advertiser in advertisers:
            if advertiser.id in seen:
                raise ValueError(f"advertiser ids must be unique; '{advertiser.id}' appears twice")
            seen.add(advertiser.id)
        return advertisers

    @field_validator("campaigns")
    @classmethod
    def _unique_campaigns(cls, campaigns: list[str]) -> list[str]:
        return _unique(campaigns, "campaign ids")

    @field_validator("select")
    @classmethod
    def _one_way_of_naming_campaigns(
        cls, select: SelectionIn | None, info: ValidationInfo
    ) -> SelectionIn | None:
        if select is not None and info.data.get("campaigns"):
            raise ValueError("give `campaigns` or `select`, not both (one way of naming campaigns)")
        return select

    @field_validator("bcat", "badv")
    @classmethod
    def _unique_blocks(cls, ids: list[str], info: ValidationInfo) -> list[str]:
        return _unique(ids, f"{info.field_name} ids")

    @model_validator(mode="after")
    def _mixture_needs_raw_sampling(self) -> AuctionRequest:
        # The mixture's log q needs every candidate's probability under BOTH proposals; scoring gives
        # temperature-1 log-probs only, so a processed (tempered / top-p) mixture density is unavailable.
        if self.proposal == "mixture" and (self.temperature != 1.0 or self.top_p != 1.0):
            raise ValueError("proposal 'mixture' requires temperature 1 and top_p 1")
        return self
