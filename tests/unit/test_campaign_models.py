"""The campaign API's models (`app.contract.campaign`) and the registry's cursor encoding.

Invariants: every bad input is refused naming its field (naive or non-RFC 3339 date-times, unknown
time zones, an end not after the start, a budget with no limit or out of [1, 10^16], ids outside the
pattern, text that renders to nothing, unknown fields, JSON of the wrong type); every valid campaign
round-trips through its stored JSON unchanged (what the registry keeps is what it reads back);
`Campaign.advertiser()` is the inline advertiser an auction would get (owner as id), though built
without validating again; a patch
reports only the fields given, and may not null a required one; a listing cursor round-trips and any
other string is refused with `CampaignCursorError` only.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from app.campaigns.store import CampaignCursorError, decode_cursor, encode_cursor
from app.contract.campaign import (
    MAX_BUDGET_MICRO,
    STORED,
    Campaign,
    CampaignCreate,
    CampaignPatch,
    time_zone_names,
)
from app.contract.request import AdvertiserIn


def create_body(**changes: Any) -> dict[str, Any]:
    return {"name": "Alpha", "description": "alpha things", "budget": {"daily_micro": 1000}, **changes}


def error_locs(model: type[Any], data: Any) -> list[tuple[Any, ...]]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    return [tuple(error["loc"]) for error in caught.value.errors()]


def stored(body: CampaignCreate, owner: str = "alpha7") -> Campaign:
    return Campaign.model_validate(
        {
            **body.model_dump(exclude={"id", "owner"}),
            "id": body.id or "c1",
            "owner": owner,
            "version": 1,
            "created_at_ms": 1,
            "updated_at_ms": 1,
        },
        strict=False,
    )


AWARE = st.datetimes(
    min_value=datetime(1900, 1, 1),
    max_value=datetime(9000, 1, 1),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=-9, minutes=-30)), timezone(timedelta(hours=14))]
    ),
)


@settings(max_examples=200, deadline=None)
@given(first=AWARE, second=AWARE, zone=st.sampled_from(time_zone_names()))
def test_schedule_end_must_follow_start(first: datetime, second: datetime, zone: str) -> None:
    """Any two aware instants in RFC 3339: accepted iff end > start; otherwise `schedule.end` named."""
    schedule = {"start": first.isoformat(), "end": second.isoformat(), "time_zone": zone}
    if second > first:
        campaign = stored(CampaignCreate.model_validate(create_body(schedule=schedule)))
        assert campaign.schedule.start_ms() < campaign.schedule.end_ms()  # type: ignore[operator]
    else:
        assert error_locs(CampaignCreate, create_body(schedule=schedule)) == [("schedule", "end")]


@pytest.mark.parametrize(
    "value",
    ["2027-01-01T00:00:00", "2027-01-01", "1798761600", 1798761600, "2027-01-01 00:00:00+00:00", "tomorrow"],
)
def test_naive_or_non_rfc3339_times_are_refused(value: Any) -> None:
    assert error_locs(CampaignCreate, create_body(schedule={"start": value})) == [("schedule", "start")]


@settings(max_examples=100, deadline=None)
@given(zone=st.text(min_size=1, max_size=40))
def test_unknown_time_zones_are_refused_naming_the_field(zone: str) -> None:
    if zone in time_zone_names():
        return
    locs = error_locs(CampaignCreate, create_body(schedule={"time_zone": zone}))
    assert locs == [("schedule", "time_zone")]


@settings(max_examples=200, deadline=None)
@given(
    daily=st.none() | st.integers(min_value=-5, max_value=MAX_BUDGET_MICRO + 5),
    total=st.none() | st.integers(min_value=-5, max_value=MAX_BUDGET_MICRO + 5),
)
def test_budget_needs_a_limit_in_range(daily: int | None, total: int | None) -> None:
    budget = {
        key: value for key, value in (("daily_micro", daily), ("total_micro", total)) if value is not None
    }

    def bad(value: int | None) -> bool:
        return value is not None and not 1 <= value <= MAX_BUDGET_MICRO

    expected = [
        ("budget", key) for key, value in (("daily_micro", daily), ("total_micro", total)) if bad(value)
    ]
    if not budget:
        expected = [("budget",)]
    if expected:
        assert error_locs(CampaignCreate, create_body(budget=budget)) == expected
    else:
        body = CampaignCreate.model_validate(create_body(budget=budget))
        assert (body.budget.daily_micro, body.budget.total_micro) == (daily, total)


@pytest.mark.parametrize(
    ("changes", "loc"),
    [
        ({"id": "has space"}, ("id",)),
        ({"id": "x" * 65}, ("id",)),
        ({"owner": "-leading-dash"}, ("owner",)),
        ({"name": "\u200b"}, ("name",)),
        ({"description": " . . "}, ("description",)),
        ({"instruction": "\u2060"}, ("instruction",)),
        ({"value_scale": 0}, ("value_scale",)),
        ({"value_scale": "1"}, ("value_scale",)),
        ({"status": "archived"}, ("status",)),
        ({"targeting": {"keywords": [" padded "]}}, ("targeting", "keywords", 0)),
        ({"targeting": {"keywords": ["x"] * 101}}, ("targeting", "keywords")),
        ({"blocked_categories": ["IAB 7"]}, ("blocked_categories", 0)),
        ({"frequency_cap": {"max_auctions": 0, "per_seconds": 60}}, ("frequency_cap", "max_auctions")),
        ({"budget": {"daily_micro": True}}, ("budget", "daily_micro")),
        ({"colour": "red"}, ("colour",)),
    ],
)
def test_each_bad_field_is_named(changes: dict[str, Any], loc: tuple[Any, ...]) -> None:
    assert error_locs(CampaignCreate, create_body(**changes)) == [loc]


NAMES = st.text(
    alphabet=st.characters(codec="utf-8", categories=["L", "N", "P", "Zs"]), min_size=1, max_size=30
)


@settings(max_examples=150, deadline=None)
@given(
    name=NAMES, description=NAMES, scale=st.floats(min_value=1e-6, max_value=1e3), daily=st.integers(1, 10**9)
)
def test_stored_json_round_trips_and_the_advertiser_is_the_inline_one(
    name: str, description: str, scale: float, daily: int
) -> None:
    """Whatever validates as a campaign reads back from its JSON as the same campaign, and its
    advertiser is the AdvertiserIn an inline request with the owner's id would carry."""
    data = create_body(name=name, description=description, value_scale=scale, budget={"daily_micro": daily})
    try:
        body = CampaignCreate.model_validate(data)
    except ValidationError as error:  # text that renders to nothing: named, and so is the inline one
        fields = {error["loc"][0] for error in error.errors()}
        assert fields <= {"name", "description"}
        with pytest.raises(ValidationError):
            AdvertiserIn.model_validate({"id": "alpha7", "name": name, "description": description})
        return
    campaign = stored(body)
    assert Campaign.model_validate_json(campaign.model_dump_json()) == campaign
    assert Campaign.model_validate_json(campaign.model_dump_json(), context=STORED) == campaign
    advertiser = campaign.advertiser()
    assert advertiser == AdvertiserIn(
        id="alpha7", name=body.name, description=body.description, value_scale=scale
    )


def test_a_patch_reports_only_what_it_gives_and_cannot_null_required_fields() -> None:
    patch = CampaignPatch.model_validate({"name": "Beta", "instruction": None, "frequency_cap": None})
    assert patch.changes() == {"name": "Beta", "instruction": None, "frequency_cap": None}
    assert CampaignPatch.model_validate({}).changes() == {}
    for field in ("name", "description", "value_scale", "budget", "schedule", "status", "targeting"):
        assert error_locs(CampaignPatch, {field: None}) == [(field,)]
    assert error_locs(CampaignPatch, {"owner": "bravo7"}) == [("owner",)]
    assert error_locs(CampaignPatch, {"id": "other"}) == [("id",)]


@settings(max_examples=200, deadline=None)
@given(
    score=st.integers(min_value=-(2**53), max_value=2**53),
    campaign_id=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}", fullmatch=True),
)
def test_cursor_round_trips(score: int, campaign_id: str) -> None:
    assert decode_cursor(encode_cursor(score, campaign_id)) == (score, campaign_id)


@settings(max_examples=300, deadline=None)
@given(cursor=st.text(max_size=120))
def test_any_other_cursor_is_refused_cleanly(cursor: str) -> None:
    """A forged cursor decodes to a position or is refused with CampaignCursorError; nothing else."""
    try:
        score, campaign_id = decode_cursor(cursor)
    except CampaignCursorError:
        return
    assert decode_cursor(encode_cursor(score, campaign_id)) == (score, campaign_id)
