"""A campaign's schedule and day: `schedule_exclusion`, `campaign_day`, `day_bounds_ms` (pure).

Invariants: paused and archived campaigns sit out; the schedule is half-open [start, end); a campaign
day is the calendar date in its own time zone, and its bounds contain `now`, start at the first instant
of that date (the transition instant when midnight is skipped) and end where the next date starts —
so a day across a DST change is 23 or 25 hours (Europe/Paris 2026-03-29, 2026-10-25), and a day whose
midnight does not exist (America/Santiago 2026-09-06) starts at 01:00 local.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from app.campaigns.eligibility import campaign_day, day_bounds_ms, schedule_exclusion
from app.contract.campaign import Campaign, time_zone_names

HOUR_MS = 3_600_000


def campaign(time_zone: str = "UTC", **changes: Any) -> Campaign:
    return Campaign.model_validate(
        {
            "id": "c1",
            "owner": "alpha7",
            "name": "Alpha",
            "description": "alpha things",
            "budget": {"daily_micro": 1_000},
            "schedule": {"time_zone": time_zone},
            "status": "active",
            "version": 1,
            "created_at_ms": 0,
            "updated_at_ms": 0,
            **changes,
        },
        strict=False,
    )


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def test_status_and_half_open_schedule() -> None:
    window = {"start": "2026-03-01T00:00:00+01:00", "end": "2026-03-02T00:00:00+01:00", "time_zone": "UTC"}
    active = campaign(schedule=window)
    start, end = ms(window["start"]), ms(window["end"])
    assert schedule_exclusion(active, start - 1) == "not_started"
    assert schedule_exclusion(active, start) is None
    assert schedule_exclusion(active, end - 1) is None
    assert schedule_exclusion(active, end) == "ended"
    assert schedule_exclusion(campaign(status="paused"), start) == "paused"
    assert schedule_exclusion(campaign(status="archived", schedule=window), end) == "archived"
    assert schedule_exclusion(campaign(), 0) is None  # no schedule: always


def test_paris_days_around_both_dst_changes() -> None:
    paris = campaign("Europe/Paris")
    spring = ms("2026-03-29T12:00:00+02:00")
    assert campaign_day(paris, spring) == "2026-03-29"
    start, end = day_bounds_ms(paris, spring)
    assert (start, end) == (ms("2026-03-29T00:00:00+01:00"), ms("2026-03-30T00:00:00+02:00"))
    assert end - start == 23 * HOUR_MS
    autumn = ms("2026-10-25T02:30:00+01:00")  # the second 02:30 of that night
    assert campaign_day(paris, autumn) == "2026-10-25"
    start, end = day_bounds_ms(paris, autumn)
    assert end - start == 25 * HOUR_MS and start == ms("2026-10-25T00:00:00+02:00")
    normal = day_bounds_ms(paris, ms("2026-07-14T23:59:59.999+02:00"))
    assert normal == (ms("2026-07-14T00:00:00+02:00"), ms("2026-07-15T00:00:00+02:00"))
    # 23:30 UTC on 2026-07-14 is already the 15th in Paris
    assert campaign_day(paris, ms("2026-07-14T23:30:00+00:00")) == "2026-07-15"
    assert campaign_day(campaign(), ms("2026-07-14T23:30:00+00:00")) == "2026-07-14"


def test_a_day_whose_midnight_is_skipped_starts_at_the_transition() -> None:
    """Chile moves its clocks from 00:00 to 01:00 (2026-09-06): that day starts at 01:00 -03."""
    santiago = campaign("America/Santiago")
    start, end = day_bounds_ms(santiago, ms("2026-09-06T12:00:00-03:00"))
    assert start == ms("2026-09-06T01:00:00-03:00") == ms("2026-09-06T00:00:00-04:00")
    assert end - start == 23 * HOUR_MS
    assert campaign_day(santiago, start - 1) == "2026-09-05"
    assert campaign_day(santiago, start) == "2026-09-06"


ZONES = st.sampled_from(time_zone_names())
NOW = st.integers(min_value=ms("1971-01-01T00:00:00+00:00"), max_value=ms("2100-01-01T00:00:00+00:00"))


@settings(max_examples=400, deadline=None)
@given(zone=ZONES, now_ms=NOW)
def test_day_bounds_contain_now_and_meet_the_neighbouring_days(zone: str, now_ms: int) -> None:
    """For every zone and time: start ≤ now < end; [start, end) is exactly the instants of that date
    (the instant before start is the previous date, end is the next one); 22 … 26 hours long."""
    subject = campaign(zone)
    start, end = day_bounds_ms(subject, now_ms)
    day = campaign_day(subject, now_ms)
    assert start <= now_ms < end
    assert campaign_day(subject, start) == day == campaign_day(subject, end - 1)
    assert campaign_day(subject, start - 1) < day < campaign_day(subject, end)
    assert 22 * HOUR_MS <= end - start <= 26 * HOUR_MS
    assert day == datetime.fromtimestamp(now_ms // 1000, UTC).astimezone(_zone(zone)).date().isoformat()


def _zone(name: str) -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def test_a_gap_straddling_midnight_starts_the_day_at_the_transition() -> None:
    """A zone whose clocks jump 23:30 -> 00:30 (built with a POSIX TZ rule): the new date's first
    instant is the jump itself, not the fold=0 reading of a midnight that never happened."""
    import io
    import zoneinfo

    # TZif v2 with no transitions and a footer rule: standard -00:30 "XST", DST at 23:30 -> 00:30
    footer = b"\nXST0:30XDT-0:30,M3.5.0/23:30,M10.5.0/3\n"
    header = b"TZif2" + b"\x00" * 15 + b"\x00\x00\x00\x00" * 2 + b"\x00\x00\x00\x00" * 2 + b"\x00\x00\x00\x01"
    v1 = header + b"\x00\x00\x00\x04" + b"\x00\x00\x00\x00\x00\x00" + b"XST\x00"
    zone = zoneinfo.ZoneInfo.from_file(io.BytesIO(v1 + v1 + footer), key="Test/Gap")
    from app.campaigns import eligibility

    day = datetime(2026, 3, 30).date()  # the jump: Sunday 29 March 23:30 -> Monday 00:30
    start = eligibility._day_start_ms(day, zone)
    assert eligibility._date_at(start, zone) == day
    assert eligibility._date_at(start - 1, zone) < day
