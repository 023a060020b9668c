"""What the archiver stores for one Redis record (app.archive.store.archived_record), and the
migrations' numbering (app.archive.schema.migrations). Pure.

Invariants: the row keeps the record's exact text; its day is the record's `created_at_ms` (the
queue's time only for a record without one, or unreadable JSON); its advertiser ids are the
record's, in order; the repository's migrations are numbered 1..n, and the first creates the
day-partitioned table.
"""

from __future__ import annotations

import datetime as dt
import json

from hypothesis import given
from hypothesis import strategies as st

from app.archive.schema import migrations
from app.archive.store import archived_record

IDS = st.lists(st.text(min_size=1, max_size=12), max_size=5)
MS = st.integers(min_value=0, max_value=4_102_444_800_000)  # up to 2100


@given(ids=IDS, created=MS, queued=MS, extra=st.text(max_size=40))
def test_row_keeps_text_day_and_advertisers(ids: list[str], created: int, queued: int, extra: str) -> None:
    text = json.dumps({"created_at_ms": created, "advertisers": [{"id": i} for i in ids], "x": extra})
    row = archived_record("a1", text, queued)
    assert row.record == text and row.auction_id == "a1"
    assert row.created_at == dt.datetime.fromtimestamp(created / 1000, dt.UTC)
    assert row.advertiser_ids == tuple(ids)


@given(text=st.text(max_size=60), queued=MS)
def test_unreadable_or_undated_record_takes_the_queue_time(text: str, queued: int) -> None:
    row = archived_record("a2", text, queued)
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and type(parsed.get("created_at_ms")) is int:
        return
    assert row.record == text
    assert row.created_at == dt.datetime.fromtimestamp(queued / 1000, dt.UTC)


@given(stamp=st.one_of(st.booleans(), st.integers(max_value=-1), st.integers(min_value=253_402_300_800_000)))
def test_out_of_range_stamp_takes_the_queue_time(stamp: object) -> None:
    """A bool or an out-of-range created_at_ms never stops the archiver (it would retry forever)."""
    row = archived_record("a3", json.dumps({"created_at_ms": stamp}), 1_000)
    assert row.created_at == dt.datetime.fromtimestamp(1, dt.UTC)


def test_migrations_are_numbered_and_the_first_partitions_by_day() -> None:
    found = migrations()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert "PARTITION BY RANGE (created_at)" in found[0].sql
