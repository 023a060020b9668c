"""`app.campaigns.recent.RecentCampaigns`: what the resolver may decide entry from without a read."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from app.campaigns.recent import RecentCampaigns, RecentRead
from app.contract.campaign import Campaign
from app.ledger.budget import BudgetState


def campaign(campaign_id: str, version: int = 1) -> Campaign:
    return Campaign.model_validate(
        {
            "id": campaign_id,
            "owner": "owner-" + campaign_id,
            "name": "Alpha",
            "description": "alpha things",
            "budget": {"daily_micro": 1000},
            "status": "active",
            "version": version,
            "created_at_ms": 1,
            "updated_at_ms": 1,
        },
        strict=False,
    )


STATE = BudgetState("2026-12-08", 0, 0, 0, 0, 0, 0, 0, 0.0)


def read(campaign_id: str, at: float, version: int = 1) -> RecentRead:
    return RecentRead(campaign(campaign_id, version), {"2026-12-08": STATE}, at)


def test_every_campaign_or_none() -> None:
    """Invariant: entry is decided from the cache only when EVERY requested campaign is in it (else one
    read of them all), in the order asked."""
    recent = RecentCampaigns(0.5)
    recent.put(read("a", 10.0))
    recent.put(read("b", 10.0))
    got = recent.get_all(["b", "a"], now=10.1)
    assert got is not None and [r.campaign.id for r in got] == ["b", "a"]
    assert recent.get_all(["a", "c"], now=10.1) is None


@given(age=st.floats(min_value=0.0, max_value=5.0), max_age=st.floats(min_value=0.01, max_value=1.0))
def test_a_read_older_than_max_age_is_never_used(age: float, max_age: float) -> None:
    """Invariant: a cached read is used at most `max_age_s` (CAMPAIGN_CACHE_S ≤ 1 s) after it was sent:
    a change anywhere is seen by every gateway's entry decision within that."""
    recent = RecentCampaigns(max_age)
    recent.put(read("a", 0.0))
    assert (recent.get_all(["a"], now=age) is not None) == (age <= max_age)


def test_off_keeps_nothing() -> None:
    """CAMPAIGN_CACHE_S=0: every auction reads its campaigns."""
    recent = RecentCampaigns(0.0)
    recent.put(read("a", 10.0))
    assert recent.get_all(["a"], now=10.0) is None


def test_a_read_sent_before_this_process_wrote_is_never_kept() -> None:
    """Invariant: after this process writes a campaign (drop), a read sent before the write — it may
    have returned the old document — is refused; one sent after it is kept."""
    recent = RecentCampaigns(0.5)
    recent.put(read("a", 1.0))
    recent.drop("a")  # at time.monotonic(): after every read stamped below it
    assert recent.get_all(["a"]) is None
    written_at = recent._dropped["a"]
    recent.put(read("a", written_at - 0.001, version=1))
    assert recent.get_all(["a"]) is None
    recent.put(read("a", written_at + 0.001, version=2))
    got = recent.get_all(["a"], now=written_at + 0.01)
    assert got is not None and got[0].campaign.version == 2


def test_bounded() -> None:
    """The least recently stored reads go first past `max_entries`."""
    recent = RecentCampaigns(0.5, max_entries=3)
    for i in range(5):
        recent.put(read(f"c{i}", 10.0))
    assert recent.get_all(["c0"], now=10.0) is None and recent.get_all(["c1"], now=10.0) is None
    assert recent.get_all(["c2", "c3", "c4"], now=10.0) is not None
