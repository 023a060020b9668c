"""Reconcile the campaign budgets (``mosaic:budget:{<id>}``) against the ledger's billing events.

Job: the budget part of `mosaic ledger reconcile` (app.ledger.reconcile calls it with what it read):
per campaign, spent_total == the campaign's payments in applied events + what trim.lua settled
(``campaign:<id>`` in ``mosaic:ledger:settled``) + events still in flight in the stream (a gateway
posts right after its billing write, before the consumer applies) + dead-lettered events of auctions
never applied (their replies were shown); no reservation posted after it expired or was voided
(``late_posts``, with the auction ids); reserved_total and each kept day's reserved == the sum of the
live reservations; and spent + reserved within the limits the last reservation was admitted under.
Imports app.ledger (budget, keys) only. Like the rest of reconcile it expects a quiet ledger: an
event applied while it reads shows as a difference (run it again).
See docs/DESIGN.md § Billing (campaign budgets).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import redis.asyncio as aioredis

from app.ledger.budget import BUDGET_PREFIX
from app.ledger.keys import as_str

Add = Callable[..., None]


def add_campaign_payments(
    sums: dict[str, int], payments: Mapping[str, int], campaigns_json: str | None
) -> None:
    """Add an event's payments to the sums of the campaigns it names ({advertiser id: campaign id})."""
    if not campaigns_json:
        return
    for adv, campaign_id in json.loads(campaigns_json).items():
        sums[str(campaign_id)] += int(payments.get(adv, 0))


def entry_campaign_payments(sums: dict[str, int], fields: Mapping[str, str]) -> None:
    """The same for a raw stream entry (one in flight or dead-lettered); a malformed one adds nothing."""
    try:
        payments = {str(k): int(v) for k, v in json.loads(fields.get("payments", "{}")).items()}
        add_campaign_payments(sums, payments, fields.get("campaigns"))
    except (ValueError, TypeError, AttributeError):
        return


def _campaign_id(key: str) -> str:
    return key.removeprefix(BUDGET_PREFIX).removeprefix("{").removesuffix("}")


def _check_one(add: Add, campaign_id: str, h: Mapping[str, str], expected_spent: int) -> None:
    def num(name: str) -> int:
        return int(h.get(name, "0"))

    if num("spent_total") != expected_spent:
        add("budget_spent", campaign_id, expected_spent, num("spent_total"), "spent vs billed payments")
    if num("late_posts"):
        late = json.loads(h.get("late_ids", "[]"))
        add("budget_late_post", campaign_id, 0, num("late_posts"), f"posted after expiry or void: {late}")
    held: dict[str, int] = defaultdict(int)
    for name, raw in h.items():
        if name.startswith("r:"):
            record = json.loads(raw)
            if record["s"] == "held":
                held[record["d"]] += int(record["a"])
    if num("reserved_total") != sum(held.values()):
        add("budget_reserved", campaign_id, sum(held.values()), num("reserved_total"), "live reservations")
    days = json.loads(h.get("days", "[]"))
    for day in days:
        if num(f"{day}|reserved") != held.get(day, 0):
            add("budget_reserved", f"{campaign_id} {day}", held.get(day, 0), num(f"{day}|reserved"))
        limit = h.get(f"{day}|limit")
        used = num(f"{day}|spent") + num(f"{day}|reserved")
        if limit is not None and used > int(limit):
            add("budget_over_limit", f"{campaign_id} {day}", f"<= {limit}", used, "daily spent + reserved")
    used = num("spent_total") + num("reserved_total")
    if "limit_total" in h and used > int(h["limit_total"]):
        add("budget_over_limit", campaign_id, f"<= {h['limit_total']}", used, "total spent + reserved")


async def check_budgets(redis: aioredis.Redis, expected_spent: Mapping[str, int], add: Add) -> int:
    """Check every campaign budget key (and every campaign with billed payments); returns how many."""
    hashes: dict[str, dict[str, str]] = {}
    async for key_raw in redis.scan_iter(match=BUDGET_PREFIX + "*", count=1000):
        key = as_str(key_raw)
        raw: Any = await redis.hgetall(key)
        hashes[_campaign_id(key)] = {as_str(k): as_str(v) for k, v in raw.items()}
    for campaign_id in sorted(set(hashes) | {c for c, v in expected_spent.items() if v}):
        _check_one(add, campaign_id, hashes.get(campaign_id, {}), expected_spent.get(campaign_id, 0))
    return len(hashes)
