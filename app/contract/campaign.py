"""The campaign API's models: `CampaignCreate` (POST /campaigns), `CampaignPatch`, `Campaign`, a page.

A campaign registers an advertiser once (owner, texts, value scale) with a budget in integer
micro-units, a schedule in its own IANA time zone, a status, targeting and a frequency cap. Every model
is strict (JSON types as they are) and forbids unknown fields; each bad input is a 422 naming its field:
a naive or non-RFC 3339 date-time, an unknown time zone, an end not after the start, a budget with
neither limit, an id outside `ADVERTISER_ID_PATTERN`, text that renders to nothing in the prompts.
Imports pydantic, the standard library's zoneinfo, `app.prompts` and `app.contract.request` only; see
docs/DESIGN.md § Layout.
"""

from __future__ import annotations

import re
import zoneinfo
from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationInfo,
    field_validator,
    model_validator,
)

from app.contract.request import _AS_INT, ADVERTISER_ID_PATTERN, AdvertiserIn
from app.prompts import AdvertiserProfile, advertiser_messages, context_messages

CampaignStatus = Literal["active", "paused", "archived"]
MAX_BUDGET_MICRO = 10**15  # the budget script keeps every sum below 2**53 (Lua numbers are doubles)
MAX_FREQUENCY_WINDOW_S = 366 * 86_400
_STRICT = ConfigDict(extra="forbid", str_strip_whitespace=True, strict=True)
# One visible, trimmed line: no control characters, no surrounding whitespace (Python's and ECMA's \s
# agree once C0/C1 controls are excluded).
_TERM_PATTERN = r"^[^\s\x00-\x1f\x7f-\x9f]([^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?$"
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")


@lru_cache(maxsize=1)
def time_zone_names() -> tuple[str, ...]:
    """The IANA time zones this process knows (zoneinfo: the system's database or `tzdata`)."""
    return tuple(sorted(zoneinfo.available_timezones() | {"UTC"}))


def _rfc3339(value: Any) -> Any:
    # Only an RFC 3339 string with its offset: no epoch numbers, no naive local time (whose instant
    # would depend on the server's zone), no date alone.
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _RFC3339.fullmatch(value.strip()):
        raise ValueError("must be an RFC 3339 date-time with its offset, e.g. 2027-01-31T09:00:00+01:00")
    return value.strip()


Rfc3339 = Annotated[AwareDatetime, Strict(False), BeforeValidator(_rfc3339)]
Micro = Annotated[int, Field(ge=1, le=MAX_BUDGET_MICRO), _AS_INT]
Term = Annotated[str, Field(min_length=1, max_length=64, pattern=_TERM_PATTERN)]
CategoryId = Annotated[str, Field(pattern=ADVERTISER_ID_PATTERN)]


def epoch_ms(moment: datetime) -> int:
    """Milliseconds since the epoch of an aware date-time (exact for every year 1 … 9999)."""
    return int(moment.timestamp() * 1000)


class CampaignBudget(BaseModel):
    """What the campaign may spend, in micro-units of the ledger's currency; at least one limit."""

    model_config = ConfigDict(
        **_STRICT,
        json_schema_extra={
            "anyOf": [
                {"required": [limit], "properties": {limit: {"type": "integer"}}}
                for limit in ("daily_micro", "total_micro")
            ]
        },
    )

    daily_micro: Micro | None = Field(
        None, description="Most spent per campaign day (the calendar day in the schedule's time zone)."
    )
    total_micro: Micro | None = Field(None, description="Most spent over the campaign's life.")

    @model_validator(mode="after")
    def _a_limit(self) -> CampaignBudget:
        if self.daily_micro is None and self.total_micro is None:
            raise ValueError("a budget needs daily_micro, total_micro or both")
        return self


class CampaignSchedule(BaseModel):
    """When the campaign runs: [start, end) (open where absent) and the zone its days are counted in."""

    model_config = _STRICT

    start: Rfc3339 | None = Field(
        None, description="First instant (RFC 3339 with offset).", examples=["2027-01-01T00:00:00+01:00"]
    )
    end: Rfc3339 | None = Field(
        None,
        description="First instant it no longer runs; after start.",
        examples=["2027-02-01T00:00:00+01:00"],
    )
    time_zone: str = Field(
        "UTC",
        description="IANA time zone of the campaign's day (daily budget, reports).",
        json_schema_extra={"enum": list(time_zone_names())},
        examples=["Europe/Paris"],
    )

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        if zone not in time_zone_names():
            raise ValueError(f"unknown IANA time zone {zone!r} (e.g. 'Europe/Paris', 'UTC')")
        return zone

    @field_validator("end")
    @classmethod
    def _end_after_start(cls, end: datetime | None, info: ValidationInfo) -> datetime | None:
        start = info.data.get("start")
        if start is not None and end is not None and end <= start:
            raise ValueError("end must be after start")
        return end

    def start_ms(self) -> int | None:
        return None if self.start is None else epoch_ms(self.start)

    def end_ms(self) -> int | None:
        return None if self.end is None else epoch_ms(self.end)


class CampaignTargeting(BaseModel):
    """What the campaign wants to appear beside (used by the selection step)."""

    # Not stripped: a keyword with surrounding whitespace is refused as its pattern says, not trimmed.
    model_config = ConfigDict(extra="forbid", strict=True)

    keywords: list[Term] = Field(
        default_factory=list,
        max_length=100,
        description="Query terms (broad match: every word of one keyword in the query, any order, any "
        "case, plural -s ignored); a match admits the campaign below the relevance threshold.",
    )
    negative_keywords: list[Term] = Field(
        default_factory=list,
        max_length=100,
        description="Query terms (same broad match) that keep the campaign out of an auction, whatever "
        "its relevance.",
    )
    categories: list[CategoryId] = Field(
        default_factory=list, max_length=50, description="Content category ids (e.g. IAB1-6)."
    )


class FrequencyCap(BaseModel):
    """At most `max_auctions` auctions entered per `per_seconds`."""

    model_config = _STRICT

    max_auctions: Annotated[int, Field(ge=1, le=1_000_000), _AS_INT]
    per_seconds: Annotated[int, Field(ge=1, le=MAX_FREQUENCY_WINDOW_S), _AS_INT]


# Validation context of a campaign read back from the registry: its texts were checked when written,
# so reading skips rendering them again (~80 us less per campaign on the auction path).
STORED = {"stored": True}


def _stored(info: ValidationInfo) -> bool:
    return isinstance(info.context, dict) and bool(info.context.get("stored"))


def _check_name(name: str, info: ValidationInfo) -> str:
    if not _stored(info):
        context_messages("query", [AdvertiserProfile(name=name, description="x", instruction=None)])
    return name


def _check_description(description: str, info: ValidationInfo) -> str:
    if not _stored(info):
        context_messages("query", [AdvertiserProfile(name="x", description=description, instruction=None)])
    return description


def _check_instruction(instruction: str | None, info: ValidationInfo) -> str | None:
    if instruction is not None and not _stored(info):
        advertiser_messages("query", AdvertiserProfile(name="x", description="x", instruction=instruction))
    return instruction


# The text a prompt is built from: refused (422 naming it) when nothing of it survives sanitising.
Name = Annotated[str, Field(min_length=1, examples=["StrumMaster"]), AfterValidator(_check_name)]
Description = Annotated[
    str,
    Field(min_length=1, examples=["selling guitars, tuners and lessons for beginners"]),
    AfterValidator(_check_description),
]
Instruction = Annotated[str, Field(min_length=1), AfterValidator(_check_instruction)]
ValueScale = Annotated[float, Field(gt=0, le=1e3, allow_inf_nan=False)]
CampaignId = Annotated[str, Field(pattern=ADVERTISER_ID_PATTERN)]
Blocked = Annotated[list[CategoryId], Field(max_length=50)]


class _CampaignFields(BaseModel):
    """The fields every campaign has (create and read); `_NOT_NULL`'s may not be patched to null."""

    model_config = _STRICT

    name: Name = Field(description="Name the reply may mention.")
    description: Description = Field(description="What the advertiser offers, in a few words.")
    instruction: Instruction | None = Field(
        None, description="System prompt of the advertiser's LLM π_i (default: the advertising one)."
    )
    value_scale: ValueScale = Field(1.0, description="s_i: money per nat (as AdvertiserIn).")
    budget: CampaignBudget
    schedule: CampaignSchedule = Field(default_factory=CampaignSchedule)
    targeting: CampaignTargeting = Field(default_factory=CampaignTargeting)
    blocked_categories: Blocked = Field(
        default_factory=list, description="Category ids the campaign must not appear beside."
    )
    frequency_cap: FrequencyCap | None = None


class CampaignCreate(_CampaignFields):
    """POST /campaigns."""

    id: CampaignId | None = Field(None, description="Campaign id; the server makes a uuid4 hex when absent.")
    owner: CampaignId | None = Field(
        None,
        description="The advertiser id it bids for (its ledger account). An advertiser key may omit it "
        "(its own); a platform key must give it.",
        examples=["strummaster"],
    )
    status: Literal["active", "paused"] = "active"


class CampaignPatch(BaseModel):
    """PATCH /campaigns/{id}: the fields given replace the stored ones (objects as a whole); `null`
    clears `instruction`, `frequency_cap`; `status: archived` is final."""

    model_config = _STRICT

    # Typed without `| None`: the document says they may not be null (a null is a 422 naming them);
    # None here only means "not given".
    name: Name = Field(None, description="Name the reply may mention.")  # type: ignore[assignment]
    description: Description = Field(None, description="What the advertiser offers.")  # type: ignore[assignment]
    instruction: Instruction | None = Field(None, description="System prompt; null: the default one.")
    value_scale: ValueScale = Field(None, description="s_i: money per nat.")  # type: ignore[assignment]
    budget: CampaignBudget = Field(None)  # type: ignore[assignment]
    schedule: CampaignSchedule = Field(None)  # type: ignore[assignment]
    status: CampaignStatus = Field(None)  # type: ignore[arg-type]
    targeting: CampaignTargeting = Field(None)  # type: ignore[assignment]
    blocked_categories: Blocked = Field(None)  # type: ignore[arg-type]
    frequency_cap: FrequencyCap | None = Field(None, description="null: no cap.")

    def changes(self) -> dict[str, Any]:
        """The fields given, as JSON-ready values."""
        return self.model_dump(mode="json", include=self.model_fields_set)


class Campaign(_CampaignFields):
    """A stored campaign (`version` is its ETag: `"<version>"`)."""

    id: CampaignId
    owner: CampaignId
    status: CampaignStatus
    version: int = Field(ge=1, description="1 at creation, +1 per change; the ETag is its quoted value.")
    created_at_ms: int
    updated_at_ms: int

    def advertiser(self) -> AdvertiserIn:
        """The advertiser this campaign bids as in an auction (its id is the owner's ledger account).

        Built without validating again: every field was checked by the same rules as AdvertiserIn's
        (pattern, bounds, texts that render) when the campaign was written
        (tests/unit/test_campaign_models.py compares it with a validated AdvertiserIn)."""
        return AdvertiserIn.model_construct(
            id=self.owner,
            name=self.name,
            description=self.description,
            instruction=self.instruction,
            value_scale=self.value_scale,
        )


class CampaignPage(BaseModel):
    """GET /campaigns: one page in creation order; `next_cursor` is null on the last page."""

    campaigns: list[Campaign]
    next_cursor: str | None = Field(None, description="Opaque: pass it as `cursor` for the next page.")
