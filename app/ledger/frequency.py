"""Frequency caps as a hard limit: two-phase reservations per (campaign, user) in Redis.

Job: `FrequencyLedger` reserves an auction's slot under a campaign's cap for one user before any model
work, posts it (pending → counted) when the auction is billed (at render in BILLING_MODE=render), voids
it when the auction fails or is cancelled, and lets an unposted one expire by itself (the lifecycle of a
budget reservation, `app.ledger.budget`). Each call is ONE round trip: a pipeline of EVALSHAs of
``frequency.lua``, each atomic on its own key ``mosaic:fcap:{<campaign id>}:<user hash>`` (the
campaign's hash tag: the slot of its budget key). Imports redis, app.settings and app.ledger (events,
keys, scripts) only.

Invariants (kept by frequency.lua): a reservation is added only while the auctions posted in the last
`per_seconds` plus the live reservations stay below `max_auctions` (so, whatever the number of gateways
and clients, at most `max_auctions` auctions per window are billed through reservations); a post counts
an auction once (gateway and ledger consumer both post; repeated posts within keep_ms find it); a post
after the reservation expired or was voided still counts (the reply was shown: ``late``). The user id
is never stored: only its SHA-256 (`user_hash`). See docs/DESIGN.md § Frequency caps.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from app.ledger.events import StreamEvent
from app.ledger.keys import as_str
from app.ledger.scripts import FREQUENCY_SCRIPT, run_pipelined
from app.settings import Settings

FCAP_PREFIX = "mosaic:fcap:"


def user_hash(user_id: str) -> str:
    """The only form of a user id the service keeps: its SHA-256, hex."""
    return hashlib.sha256(user_id.encode("utf-8")).hexdigest()


def fcap_key(campaign_id: str, user: str) -> str:
    """The (campaign, user) cap's sorted set; ``{campaign id}`` is the campaign's Cluster hash tag."""
    return f"{FCAP_PREFIX}{{{campaign_id}}}:{user}"


def reservation_expiry_ms(settings: Settings, now_ms: int, render: bool) -> int:
    """When a cap slot reserved now (before the model work) expires if nobody posts or voids it: past the
    auction's deadline and its billing write, plus BUDGET_RESERVATION_TTL_S (and RENDER_WINDOW_S in
    render mode: a pending charge holds its slot until rendered or expired)."""
    seconds = (
        settings.auction_deadline_s + settings.billing_append_timeout_s + settings.budget_reservation_ttl_s
    )
    return now_ms + int((seconds + (settings.render_window_s if render else 0)) * 1000)


def horizon_ms(settings: Settings) -> int:
    """The longest a reservation may live unposted (render mode's expiry)."""
    return reservation_expiry_ms(settings, 0, render=True)


def keep_ms(settings: Settings, per_seconds: int) -> int:
    """How long a posted auction is kept: its window plus the horizon (a repeated post finds it)."""
    return per_seconds * 1000 + horizon_ms(settings)


@dataclass(frozen=True)
class FrequencyHold:
    """One campaign's cap for one user in one auction: what to reserve, post or void."""

    campaign_id: str
    user: str  # user_hash(user_id)
    max_auctions: int
    per_seconds: int


@dataclass(frozen=True)
class CapCount:
    posted: int  # auctions billed within the window
    pending: int  # live reservations

    def reached(self, max_auctions: int) -> bool:
        return self.posted + self.pending >= max_auctions


class FrequencyLedger:
    """Reserve, post, void and count frequency caps (one round trip per call)."""

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self._sha: str | None = None

    async def sha(self) -> str:
        if self._sha is None:
            self._sha = as_str(await self.redis.script_load(FREQUENCY_SCRIPT))
        return self._sha

    def _forget(self) -> None:
        self._sha = None

    async def _run(self, calls: Sequence[tuple[str, Sequence[object]]]) -> list[Any]:
        return await run_pipelined(self.redis, self.sha, self._forget, calls, name="frequency")

    async def reserve_all(
        self, holds: Sequence[FrequencyHold], auction_id: str, now_ms: int, expires_at_ms: int
    ) -> list[bool]:
        """Reserve the auction's slot under each cap (atomic per key): False where the cap is reached."""
        calls = [
            (
                fcap_key(h.campaign_id, h.user),
                [
                    "reserve",
                    now_ms,
                    auction_id,
                    h.max_auctions,
                    h.per_seconds * 1000,
                    expires_at_ms,
                    keep_ms(self.settings, h.per_seconds),
                ],
            )
            for h in holds
        ]
        return [bool(int(reply[0])) for reply in await self._run(calls)]

    async def post_all(
        self, holds: Sequence[tuple[str, str, int]], auction_id: str, now_ms: int, created_at_ms: int
    ) -> list[str]:
        """Count the billed auction under each (campaign id, user hash, per_seconds): ``posted``,
        ``already_posted``, ``late`` (expired or voided, counted all the same) or ``stale``."""
        calls = [
            (
                fcap_key(campaign_id, user),
                ["post", now_ms, auction_id, keep_ms(self.settings, per), created_at_ms],
            )
            for campaign_id, user, per in holds
        ]
        return [as_str(reply) for reply in await self._run(calls)]

    async def void_all(self, holds: Sequence[tuple[str, str]], auction_id: str, now_ms: int) -> list[str]:
        """Release the auction's reservations (idempotent): ``voided``, ``posted`` or ``unknown``."""
        calls = [(fcap_key(campaign_id, user), ["void", now_ms, auction_id]) for campaign_id, user in holds]
        return [as_str(reply) for reply in await self._run(calls)]

    async def count_all(self, holds: Sequence[FrequencyHold], now_ms: int) -> list[CapCount]:
        """Each cap's auctions posted within its window and its live reservations (a test auction
        checks, never reserves)."""
        calls = [(fcap_key(h.campaign_id, h.user), ["count", now_ms, h.per_seconds * 1000]) for h in holds]
        return [CapCount(int(r[0]), int(r[1])) for r in await self._run(calls)]

    async def post_events(self, events: Sequence[StreamEvent], stats: MutableMapping[str, int]) -> None:
        """The ledger consumer's post of every cap slot its batch's events hold (ONE round trip; idempotent,
        like its budget posts), counted in `stats` as ``fcap_<status>``."""
        now_ms = int(time.time() * 1000)
        calls = [
            (fcap_key(c, user), ["post", now_ms, e.auction_id, keep_ms(self.settings, per), e.created_at_ms])
            for e in events
            for c, user, per in e.fcap_holds()
        ]
        for reply in await self._run(calls):
            stats[f"fcap_{as_str(reply)}"] = stats.get(f"fcap_{as_str(reply)}", 0) + 1

    async def reserve(self, hold: FrequencyHold, auction_id: str, now_ms: int, ttl_ms: int) -> bool:
        (ok,) = await self.reserve_all([hold], auction_id, now_ms, now_ms + ttl_ms)
        return ok

    async def post(self, hold: FrequencyHold, auction_id: str, now_ms: int, created_at_ms: int) -> str:
        (status,) = await self.post_all(
            [(hold.campaign_id, hold.user, hold.per_seconds)], auction_id, now_ms, created_at_ms
        )
        return status

    async def void(self, hold: FrequencyHold, auction_id: str, now_ms: int) -> str:
        (status,) = await self.void_all([(hold.campaign_id, hold.user)], auction_id, now_ms)
        return status

    async def count(self, hold: FrequencyHold, now_ms: int) -> CapCount:
        (counted,) = await self.count_all([hold], now_ms)
        return counted
