"""Bounded Redis memory for the ledger: trims the billing stream, old markers and histories.

Job: `LedgerTrimmer.trim_once` runs ``trim.lua`` (beside this module) until nothing more may go;
`run` does it every BILLING_TRIM_INTERVAL_S (a task next to each ledger consumer: embedded in
``mosaic serve`` and in ``mosaic ledger consume``; several at once are safe, the script is atomic).
Imports redis, app.settings and app.ledger (keys, scripts) only.

The invariant (proved at the top of trim.lua, stated in DESIGN.md, tested in
tests/integration/test_ledger_trim.py): an entry is removed only when it is older than
BILLING_RETENTION_S and at least W = AUCTION_DEADLINE_S + BILLING_APPEND_TIMEOUT_S older than every
consumer group's oldest pending entry and last-delivered id - never a pending or undelivered entry.
An applied marker (and its history entries) goes with the entry it was applied from, its amounts
folded into ``mosaic:ledger:settled``; since every entry of one auction is appended within W of the
others, none of them can be delivered again once the marker is gone, so exactly-once holds.
Retention > W is enforced by Settings. The audit records expire on their own (AUDIT_TTL_S).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from app.ledger.keys import LedgerKeys, stream_key
from app.ledger.scripts import TRIM_SCRIPT
from app.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class TrimResult:
    entries: int = 0  # stream entries removed
    settled: int = 0  # applied markers folded into the settled totals (with their history entries)
    threshold_ms: int = 0  # the last call's threshold: entries below it may go (0: none may)


class LedgerTrimmer:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = LedgerKeys.of(settings)
        self._script = redis.register_script(TRIM_SCRIPT)

    async def trim_once(self, max_calls: int = 1000) -> TrimResult:
        """Trim until a call removes less than a full batch (each call is one atomic script run)."""
        s = self.settings
        total = TrimResult()
        keys = [stream_key(s), self.keys.applied, self.keys.settled, self.keys.duplicates]
        args: list[str | int] = [
            int(s.billing_retention_s * 1000),
            int(s.billing_reappend_window_s * 1000),
            s.billing_trim_batch,
            self.keys.history_prefix,
        ]
        for _ in range(max_calls):
            entries, settled, threshold = (int(x) for x in await self._script(keys=keys, args=args))
            total.entries += entries
            total.settled += settled
            total.threshold_ms = threshold
            if entries < s.billing_trim_batch:
                break
        if total.entries:
            logger.info(
                "trimmed the billing stream",
                extra={"entries": total.entries, "settled": total.settled, "threshold": total.threshold_ms},
            )
        return total

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.trim_once()
            except (RedisError, OSError) as error:
                logger.warning("ledger trim failed (retried later): %s: %s", type(error).__name__, error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.settings.billing_trim_interval_s)
