"""The ledger's read side: an advertiser's balance and history, and a summary of the whole ledger.

Job: `LedgerReader`, used by the HTTP routes (app.gateway.ledger_routes), the gateway's billing metrics and
`reconcile`; it only reads. Imports app.settings and app.ledger (events, keys, render) only.
See docs/DESIGN.md § Billing.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from app.ledger.events import format_micro
from app.ledger.keys import (
    ADVERTISER_ACCOUNT_PREFIX,
    LEDGER_PREFIX,
    PLATFORM_ACCOUNT,
    LedgerKeys,
    as_str,
    dead_stream_key,
    stream_key,
)
from app.ledger.render import RenderLedger
from app.settings import Settings

# The last `mosaic ledger reconcile`'s result (differences, unix time): the gateway exports it as
# mosaic_ledger_reconcile_differences / _timestamp_seconds for alerting.
RECONCILE_KEY = LEDGER_PREFIX + "reconcile"
LAG_COUNT_CAP = 1000


class LedgerReader:
    """Balances, histories and the state of the stream, for the API and the metrics."""

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = LedgerKeys.of(settings)

    async def advertiser(self, advertiser_id: str, limit: int = 50) -> dict[str, Any]:
        """The advertiser's balance, number of auctions billed and its `limit` latest entries (newest first).

        ``balance_micro`` is the ledger account (minus what it paid); ``paid_micro`` = -balance. An
        advertiser never billed gets zeros.
        """
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(self.keys.balances, ADVERTISER_ACCOUNT_PREFIX + advertiser_id)
        pipe.llen(self.keys.history(advertiser_id))
        pipe.lrange(self.keys.history(advertiser_id), -max(limit, 1), -1)
        balance_raw, auctions_raw, history_raw = await pipe.execute()
        balance = int(as_str(balance_raw)) if balance_raw is not None else 0
        history: list[dict[str, Any]] = []
        for raw in reversed(history_raw if limit > 0 else []):
            entry = json.loads(as_str(raw))
            entry["payment"] = format_micro(entry["payment_micro"])
            history.append(entry)
        return {
            "advertiser_id": advertiser_id,
            "currency": self.settings.currency,
            "balance_micro": balance,
            "balance": format_micro(balance),
            "paid_micro": -balance,
            "paid": format_micro(-balance),
            "auctions": int(auctions_raw),
            "history": history,
        }

    async def _group_info(self) -> dict[str, Any]:
        try:
            groups = await self.redis.xinfo_groups(stream_key(self.settings))
        except ResponseError:  # no stream yet
            return {}
        for group in groups:
            info = {as_str(k): v for k, v in group.items()}
            if as_str(info.get("name")) == self.settings.billing_group:
                return info
        return {}

    async def summary(self) -> dict[str, Any]:
        """Revenue, counters, stream length, pending (delivered, not acked), lag (not yet delivered)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.meta)
        pipe.hlen(self.keys.applied)
        pipe.hget(self.keys.balances, PLATFORM_ACCOUNT)
        pipe.xlen(stream_key(self.settings))
        pipe.xlen(dead_stream_key(self.settings))
        pipe.hgetall(RECONCILE_KEY)
        meta_raw, applied, revenue_raw, stream_length, dead_length, reconcile_raw = await pipe.execute()
        last_reconcile = {as_str(k): int(as_str(v)) for k, v in (reconcile_raw or {}).items()}
        meta = {as_str(k): int(as_str(v)) for k, v in (meta_raw or {}).items()}
        group = await self._group_info()
        pending = int(group.get("pending", 0) or 0)
        lag_capped = False
        lag: int | None = None
        if group:
            raw_lag = group.get("lag")
            if raw_lag is not None:  # Redis >= 7
                lag = int(raw_lag)
            else:
                last = as_str(group.get("last-delivered-id", "0-0"))
                # Redis 6.2 has no lag field: count what follows the last delivered id (capped)
                after = await self.redis.xrange(
                    stream_key(self.settings), f"({last}", "+", count=LAG_COUNT_CAP
                )
                lag = len(after or [])
                lag_capped = lag >= LAG_COUNT_CAP
        else:
            lag = int(stream_length)
        revenue = int(as_str(revenue_raw)) if revenue_raw is not None else 0
        return {
            "currency": self.settings.currency,
            "revenue_micro": revenue,
            "revenue": format_micro(revenue),
            "events_applied": int(applied),
            "duplicates": meta.get("duplicates", 0),
            "conflicts": meta.get("conflicts", 0),
            "dead_letters": meta.get("dead_letters", 0),
            "dead_letter_stream_length": int(dead_length),
            "stream_length": int(stream_length),
            "pending": pending,
            "lag": lag,
            "lag_capped": lag_capped,
            "consumers": int(group.get("consumers", 0) or 0),
            "reconcile_differences": last_reconcile.get("differences"),
            "reconcile_unix": last_reconcile.get("unix"),
            # BILLING_MODE=render: charges awaiting a render, billed by one, expired unrendered
            "render": await RenderLedger(self.redis, self.settings).counts(),
        }

    async def record_reconcile(self, differences: int, unix: int) -> None:
        """Keep the result of one reconcile run (read back by :meth:`summary`)."""
        await self.redis.hset(RECONCILE_KEY, mapping={"differences": differences, "unix": unix})
