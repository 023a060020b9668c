"""The campaigns (and their budget states) this process read last: who may enter an auction, without a
Redis round trip before its model work.

Job: `RecentCampaigns` keeps, per campaign id, the `Campaign` and its budget state per day as one read
(`CampaignResolver._read`) returned them, for at most CAMPAIGN_CACHE_S seconds from when that read was
sent; the resolver decides entry from it (status, schedule, badv/bcat, out_of_budget, the pacing α).
It is never the authority on a charge: every entry decided from it is read again beside the model work
(`CampaignResolver.recheck`, one round trip) before any hold or reservation, a campaign found paused,
archived, deleted or out of its schedule then is withdrawn (never charged, nothing reserved), and the
budget limits and remaining amounts the fit and the reservations use are that read's; budget.lua stays
the hard limit. A write through this process's store (create, update, archive) drops the entry at
once, and a read sent before that drop is never stored after it; other gateways' writes are seen within
CAMPAIGN_CACHE_S (the registry's "visible to every gateway within 1 s"). Imports the contract's
`Campaign` and the budget ledger's `BudgetState` only; see docs/DESIGN.md § Campaigns, budgets and pacing.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from app.contract.campaign import Campaign
from app.ledger.budget import BudgetState

MAX_ENTRIES = 10_000  # the least recently stored go first past it


@dataclass(frozen=True)
class RecentRead:
    """One campaign as one read returned it: the document and its budget state per day read."""

    campaign: Campaign
    states: dict[str, BudgetState]
    read_at: float  # time.monotonic() when the read was sent


class RecentCampaigns:
    """Per-process cache of the last read of each campaign, at most `max_age_s` old (0: off)."""

    def __init__(self, max_age_s: float, max_entries: int = MAX_ENTRIES) -> None:
        self.max_age_s = max_age_s
        self.max_entries = max_entries
        self._reads: OrderedDict[str, RecentRead] = OrderedDict()
        self._dropped: dict[str, float] = {}  # id -> when this process last wrote it (monotonic)

    def put(self, read: RecentRead) -> None:
        """Keep `read` unless this process wrote the campaign after the read was sent (it may predate
        the write) or caching is off."""
        campaign_id = read.campaign.id
        if self.max_age_s <= 0 or read.read_at <= self._dropped.get(campaign_id, float("-inf")):
            return
        self._reads[campaign_id] = read
        self._reads.move_to_end(campaign_id)
        while len(self._reads) > self.max_entries:
            self._reads.popitem(last=False)

    def drop(self, campaign_id: str) -> None:
        """This process just wrote the campaign: forget what it read of it."""
        now = time.monotonic()
        self._reads.pop(campaign_id, None)
        self._dropped[campaign_id] = now
        if len(self._dropped) > self.max_entries:  # only drops younger than max_age_s still matter
            horizon = now - self.max_age_s
            self._dropped = {k: v for k, v in self._dropped.items() if v >= horizon}

    def get_all(self, campaign_ids: Sequence[str], now: float | None = None) -> list[RecentRead] | None:
        """Every campaign of `campaign_ids` as last read, or None when one is missing or too old (the
        caller then reads them all: one round trip either way)."""
        if self.max_age_s <= 0:
            return None
        now = time.monotonic() if now is None else now
        found: list[RecentRead] = []
        for campaign_id in campaign_ids:
            read = self._reads.get(campaign_id)
            if read is None or now - read.read_at > self.max_age_s:
                return None
            found.append(read)
        return found
