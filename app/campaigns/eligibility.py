"""When a campaign may bid, and its day: pure functions of a `Campaign` and a time (no I/O).

`schedule_exclusion` says why a campaign sits out an auction by its status and schedule (its budget
is the budget ledger's to judge); `campaign_day` and `day_bounds_ms` give the calendar day in the
campaign's time zone that its daily budget counts, with zoneinfo's DST rules: a day is 23, 24 or 25
hours long, and it starts at the first instant of that local date (the transition instant itself when
midnight is skipped). Imports the standard library and `app.contract.campaign` only; see
docs/DESIGN.md § Layout.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from app.contract.campaign import Campaign, epoch_ms
from app.contract.result import ExclusionReason


def schedule_exclusion(campaign: Campaign, now_ms: int) -> ExclusionReason | None:
    """Why the campaign may not bid at `now_ms` by its status and schedule, or None when it may.

    The schedule is half-open: it runs from `start` (included) to `end` (excluded)."""
    return window_exclusion(campaign.status, campaign.schedule.start_ms(), campaign.schedule.end_ms(), now_ms)


def window_exclusion(
    status: str, start_ms: int | None, end_ms: int | None, now_ms: int
) -> ExclusionReason | None:
    """`schedule_exclusion` from the fields it reads (the selection catalog keeps only those)."""
    if status == "archived":
        return "archived"
    if status == "paused":
        return "paused"
    if start_ms is not None and now_ms < start_ms:
        return "not_started"
    if end_ms is not None and now_ms >= end_ms:
        return "ended"
    return None


def _date_at(moment_ms: int, zone: ZoneInfo) -> date:
    # whole seconds (floored) fall on the same local date as the millisecond itself
    return datetime.fromtimestamp(moment_ms // 1000, zone).date()


def _local_date(campaign: Campaign, now_ms: int) -> tuple[date, ZoneInfo]:
    zone = ZoneInfo(campaign.schedule.time_zone)
    return _date_at(now_ms, zone), zone


def campaign_day(campaign: Campaign, now_ms: int) -> str:
    """The campaign's day at `now_ms`: ``YYYY-MM-DD``, the calendar date in its time zone."""
    return _local_date(campaign, now_ms)[0].isoformat()


def _day_start_ms(day: date, zone: ZoneInfo) -> int:
    # fold=0: a skipped midnight is read with the offset before the transition, which is the
    # transition instant (the day's first instant) when the gap starts at midnight; a repeated
    # midnight is its first occurrence.
    start = epoch_ms(datetime.combine(day, time(0, 0), tzinfo=zone))
    if _date_at(start - 1, zone) < day:
        return start
    # A gap that straddles midnight (e.g. 23:30 -> 00:30): the day began earlier, at the transition.
    low, high = start - 26 * 3_600_000, start
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if _date_at(middle, zone) >= day else (middle, high)
    return high


def day_bounds_ms(campaign: Campaign, now_ms: int) -> tuple[int, int]:
    """[start, end) in epoch ms of the campaign's day at `now_ms` (DST-aware: 23, 24 or 25 hours)."""
    day, zone = _local_date(campaign, now_ms)
    return _day_start_ms(day, zone), _day_start_ms(day + timedelta(days=1), zone)
