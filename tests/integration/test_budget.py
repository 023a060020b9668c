"""Campaign budgets (app.ledger.budget, budget.lua) against a real Redis server process: two-phase
reserve / post / void / expiry, idempotent posts, late posts, daily and total limits, day roll-over,
concurrent reservers, a SIGKILLed reserver, the ledger consumer's post, render expiry, reconcile.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from app.ledger.budget import (
    BudgetLedger,
    BudgetLimits,
    PacingStep,
    Reservation,
    budget_key,
    reservation_expiry_ms,
)
from app.ledger.consumer import LedgerConsumer
from app.ledger.events import make_billing_event
from app.ledger.keys import LedgerKeys, as_str, decode_fields
from app.ledger.reconcile import reconcile
from app.ledger.redis_store import make_client
from app.ledger.render import RenderLedger, pending_commands
from app.ledger.trim import LedgerTrimmer
from tests.fixtures_redis import RedisServerProcess
from tests.integration.test_ledger import drain, ledger_settings

DAY = "2026-03-01"
NOW = 1_772_323_200_000  # 2026-03-01T00:00:00Z
LIMITS = BudgetLimits(daily_micro=1_000, total_micro=5_000)


def run(url: str, body: Any) -> Any:
    async def main() -> Any:
        client = make_client(url, ledger_settings(url))
        try:
            return await body(client, BudgetLedger(client, ledger_settings(url)))
        finally:
            await client.aclose()

    return asyncio.run(main())


def res(auction_id: str, amount: int, campaign: str = "c1", day: str = DAY, limits: BudgetLimits = LIMITS,
        expires: int = NOW + 60_000) -> Reservation:  # fmt: skip
    return Reservation(campaign, auction_id, amount, limits, day, expires)


def test_reserve_post_void_expire(redis_server: RedisServerProcess) -> None:
    """reserved → spent on post, released on void and on expiry (lazily, by the next call on the key);
    spent + reserved never passes the daily limit through reservations."""

    async def body(r: aioredis.Redis, b: BudgetLedger) -> None:
        assert await b.reserve_all([res("a1", 600), res("a2", 300), res("a3", 200)], NOW) == [
            True,
            True,
            False,
        ]
        [s] = await b.states(["c1"], [DAY], NOW)
        assert (s.reserved_today, s.reserved_total, s.spent_total) == (900, 900, 0)
        assert s.remaining(LIMITS) == 100
        assert await b.post_all(["c1"], "a1", [None], NOW + 1) == ["posted"]
        assert await b.void_all(["c1"], "a2", NOW + 2) == ["voided"]
        assert await b.void_all(["c1"], "a2", NOW + 3) == ["voided"]  # idempotent
        # the gateway's post is final: the record is forgotten, and a void changes nothing
        assert await b.void_all(["c1"], "a1", NOW + 3) == ["unknown"]
        [s] = await b.states(["c1"], [DAY], NOW + 4)
        assert (s.spent_today, s.reserved_today, s.auctions_today, s.charged_total) == (600, 0, 1, 1)
        assert await b.reserve_all([res("a4", 400, expires=NOW + 10)], NOW + 5) == [True]
        assert await b.reserve_all([res("a5", 400)], NOW + 6) == [False]  # a4 still holds its 400
        assert await b.reserve_all([res("a5", 400)], NOW + 11) == [True]  # a4 expired: released
        [s] = await b.states(["c1"], [DAY], NOW + 12)
        assert (s.spent_today, s.reserved_today, s.expired_total) == (600, 400, 1)

    run(redis_server.url, body)


async def consumer_post(b: BudgetLedger, auction_id: str) -> str:
    """The ledger consumer's post of one auction on c1 (no pacing step, not final)."""
    (reply,) = await b._run([("c1", b.post_args([auction_id], None, NOW))])
    return as_str(reply[0])


def test_a_gateway_post_without_a_step_is_final(redis_server: RedisServerProcess) -> None:
    """The gateway's post is the last: with or without a pacing step its record goes at once (the hash
    keeps only auctions in flight), and a consumer post after it changes nothing."""

    async def body(r: aioredis.Redis, b: BudgetLedger) -> None:
        assert await b.reserve_all([res("f1", 250)], NOW) == [True]
        assert await consumer_post(b, "f1") == "posted"
        assert await b.post_all(["c1"], "f1", [None], NOW) == ["already_posted"]
        assert not await r.hexists(budget_key("c1"), "r:f1")
        assert await consumer_post(b, "f1") == "unknown"
        [s] = await b.states(["c1"], [DAY], NOW)
        assert (s.spent_total, s.auctions_total, s.reserved_total) == (250, 1, 0)

    run(redis_server.url, body)


def test_two_posters_post_once_and_step_once(redis_server: RedisServerProcess) -> None:
    """Gateway and consumer both post (either order): spent once, the pacing step applied once,
    μ ← clip(μ − ε(ρ − z)/ρ, 0, μ̄)."""

    async def body(r: aioredis.Redis, b: BudgetLedger) -> None:
        step = PacingStep(target_micro=100.0, epsilon=0.5, mu_max=2.0)
        assert await b.reserve_all([res("g1", 300), res("g2", 300)], NOW) == [True, True]
        # gateway first (with its step), then the consumer (without)
        assert await b.post_all(["c1"], "g1", [step], NOW) == ["posted"]
        assert await consumer_post(b, "g1") == "unknown"
        [s] = await b.states(["c1"], [DAY], NOW)
        assert s.spent_total == 300 and s.mu == pytest.approx(1.0)  # 0 − 0.5·(100 − 300)/100
        # consumer first (twice: a redelivery), then the gateway's step
        assert await consumer_post(b, "g2") == "posted"
        assert await consumer_post(b, "g2") == "already_posted"
        assert await b.post_all(["c1"], "g2", [step], NOW) == ["stepped"]
        assert await b.post_all(["c1"], "g2", [step], NOW) == ["unknown"]
        assert await consumer_post(b, "g2") == "unknown"
        [s] = await b.states(["c1"], [DAY], NOW)
        assert (s.spent_total, s.auctions_total) == (600, 2) and s.mu == pytest.approx(2.0)  # clipped at μ̄

    run(redis_server.url, body)


def test_late_post_after_expiry_is_counted_and_reported(redis_server: RedisServerProcess) -> None:
    """A post after the reservation expired is still counted (the reply was shown) and recorded;
    reconcile reports it."""

    async def body(r: aioredis.Redis, b: BudgetLedger) -> Any:
        assert await b.reserve_all([res("late1", 700, expires=NOW + 10)], NOW) == [True]
        assert await b.reserve_all([res("other", 800)], NOW + 20) == [True]  # late1's 700 released
        assert await b.post_all(["c1"], "late1", [None], NOW + 30) == ["late"]
        [s] = await b.states(["c1"], [DAY], NOW + 31)
        assert (s.spent_today, s.late_posts) == (700, 1)
        assert await b.late_auctions("c1") == ["late1"]
        return await reconcile(r, ledger_settings(redis_server.url))

    report = run(redis_server.url, body)
    kinds = {d.kind for d in report.differences}
    assert "budget_late_post" in kinds and "budget_over_limit" in kinds  # 700 + 800 > 1000


def test_daily_and_total_limits_and_day_rollover(redis_server: RedisServerProcess) -> None:
    """The daily limit binds per campaign day, the total across days; a new day starts fresh; only
    the 7 most recent days' counters are kept."""

    async def body(r: aioredis.Redis, b: BudgetLedger) -> None:
        total = BudgetLimits(daily_micro=1_000, total_micro=2_500)
        for i, day in enumerate(["2026-03-01", "2026-03-02"]):
            assert await b.reserve_all([res(f"d{i}", 1_000, day=day, limits=total)], NOW) == [True]
            assert await b.reserve_all([res(f"e{i}", 1, day=day, limits=total)], NOW) == [False]  # daily
            assert await b.post_all(["c1"], f"d{i}", [None], NOW) == ["posted"]
        assert await b.reserve_all([res("f", 600, day="2026-03-03", limits=total)], NOW) == [False]  # total
        assert await b.reserve_all([res("f", 500, day="2026-03-03", limits=total)], NOW) == [True]
        only_total = BudgetLimits(daily_micro=None, total_micro=None)
        for i in range(4, 14):
            day = f"2026-03-{i:02d}"
            assert await b.reserve_all([res(f"g{i}", 10, day=day, limits=only_total)], NOW) == [True]
            if i != 5:  # a day that still holds a reservation is kept however old
                assert await b.post_all(["c1"], f"g{i}", [None], NOW) == ["posted"]
        days = json.loads(await r.hget(budget_key("c1"), "days"))
        assert days == ["2026-03-03", "2026-03-05"] + [f"2026-03-{i:02d}" for i in range(7, 14)]
        assert await b.post_all(["c1"], "g5", [None], NOW) == ["posted"]
        assert await b.reserve_all([res("h", 10, day="2026-03-14", limits=only_total)], NOW) == [True]
        days = json.loads(await r.hget(budget_key("c1"), "days"))
        assert days == ["2026-03-03"] + [f"2026-03-{i:02d}" for i in range(8, 15)]
        assert await r.hget(budget_key("c1"), "2026-03-01|spent") is None
        [old] = await b.states(["c1"], ["2026-03-01"], NOW)
        assert old.spent_today == 0 and old.spent_total == 2_000 + 10 * 10

    run(redis_server.url, body)


def test_concurrent_reservers_exactly_k_fit(redis_server: RedisServerProcess) -> None:
    """50 concurrent reservers (5 connections) on a budget that fits exactly 7 of them: exactly 7
    succeed, and after posting, spent == 7 × amount ≤ the budget to the micro-unit."""
    amount, k = 123_457, 7
    limits = BudgetLimits(daily_micro=None, total_micro=amount * k + amount - 1)

    async def main() -> None:
        settings = ledger_settings(redis_server.url)
        clients = [aioredis.Redis.from_url(redis_server.url) for _ in range(5)]
        ledgers = [BudgetLedger(c, settings) for c in clients]
        try:

            async def one(i: int) -> bool:
                [ok] = await ledgers[i % 5].reserve_all([res(f"x{i}", amount, limits=limits)], NOW)
                if ok:
                    await ledgers[i % 5].post_all(["c1"], f"x{i}", [None], NOW)
                return ok

            results = await asyncio.gather(*(one(i) for i in range(50)))
            assert sum(results) == k
            [s] = await ledgers[0].states(["c1"], [DAY], NOW)
            assert s.spent_total == amount * k <= limits.total_micro  # type: ignore[operator]
            assert s.reserved_total == 0
        finally:
            for c in clients:
                await c.aclose()

    asyncio.run(main())


RESERVER = """
import asyncio, sys, time
import redis.asyncio as aioredis
from app.ledger.budget import BudgetLedger, BudgetLimits, Reservation
from app.settings import Settings
async def main():
    r = aioredis.Redis.from_url(sys.argv[1])
    now = int(time.time() * 1000)
    ok = await BudgetLedger(r, Settings(api_keys=[])).reserve_all(
        [Reservation("k1", "killed", 900, BudgetLimits(1000, None), "2026-03-01", now + 1500)], now)
    print("reserved" if ok == [True] else "refused", flush=True)
    await asyncio.sleep(3600)  # never posts: SIGKILLed here
asyncio.run(main())
"""


def test_sigkilled_reserver_releases_its_budget_on_expiry(redis_server: RedisServerProcess) -> None:
    """A process that reserved and was SIGKILLed before posting: its reservation blocks the budget
    until its expiry, then is released by itself (no sweeper)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(
        [sys.executable, "-c", RESERVER, redis_server.url], stdout=subprocess.PIPE, env=env
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"reserved"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    async def body(r: aioredis.Redis, b: BudgetLedger) -> None:
        limits = BudgetLimits(1000, None)
        now = int(time.time() * 1000)
        after = res("after", 900, campaign="k1", limits=limits, expires=now + 60_000)
        assert await b.reserve_all([after], now) == [False]
        await asyncio.sleep(1.6)
        now = int(time.time() * 1000)
        assert await b.reserve_all([after], now) == [True]
        [s] = await b.states(["k1"], [DAY], now)
        assert (s.reserved_today, s.expired_total) == (900, 1)

    run(redis_server.url, body)


def test_consumer_posts_the_reservation_and_reconcile_is_clean(redis_server: RedisServerProcess) -> None:
    """The ledger consumer posts the reservations of an event that carries campaigns (a gateway that
    died before its own post); reconcile then finds spent == billed payments, and catches a planted
    spend and a planted reservation counter."""
    settings = ledger_settings(redis_server.url)

    async def body(r: aioredis.Redis, b: BudgetLedger) -> None:
        now = int(time.time() * 1000)
        assert await b.reserve_all(
            [res("p1", 250_000, limits=BudgetLimits(250_000, None), expires=now + 60_000)], now
        ) == [True]
        assert await b.reserve_all([res("p2", 0, campaign="c2", expires=now + 60_000)], now) == [True]
        event = make_billing_event("p1", {"adv": 0.25, "other": 0.0, "inline": 0.5}, "USD",
                                   campaigns={"adv": "c1", "other": "c2"})  # fmt: skip
        event2 = make_billing_event("p2", {"other": 0.0}, "USD", campaigns={"other": "c2"})
        for e in (event, event2):
            await r.xadd(settings.billing_stream, e.stream_fields())  # type: ignore[arg-type]
        consumer = LedgerConsumer(r, settings, "c")
        await drain(consumer, r, settings)
        assert consumer.stats["budget_posted"] == 2 and consumer.stats["budget_unknown"] == 1
        [s1, s2] = await b.states(["c1", "c2"], [DAY, DAY], now)
        assert (s1.spent_total, s1.charged_total, s1.reserved_total) == (250_000, 1, 0)
        assert (s2.spent_total, s2.auctions_total, s2.charged_total) == (0, 1, 0)
        marker = json.loads(await r.hget(LedgerKeys.default().applied, "p1"))
        assert marker["c"] == '{"adv":"c1","other":"c2"}'
        report = await reconcile(r, settings)
        assert report.ok, report.differences
        assert report.campaigns == 2
        await r.hincrby(budget_key("c1"), "spent_total", 1)
        await r.hincrby(budget_key("c2"), "reserved_total", 5)
        kinds = sorted(d.kind for d in (await reconcile(r, settings)).differences)
        assert kinds == ["budget_reserved", "budget_spent"]

    run(redis_server.url, body)


def test_negative_payment_refused_by_apply_lua(redis_server: RedisServerProcess) -> None:
    """apply.lua refuses a negative payment (invalid, never applied: no credit path)."""
    settings = ledger_settings(redis_server.url, billing_max_deliveries=1)

    async def body(r: aioredis.Redis, b: BudgetLedger) -> None:
        fields = make_billing_event("neg", {"x": 1.0, "y": 0.5}, "USD").stream_fields()
        fields["payments"] = '{"x":1000000,"y":-500000}'
        fields["revenue_micro"] = "500000"
        await r.xadd(settings.billing_stream, fields)  # type: ignore[arg-type]
        consumer = LedgerConsumer(r, settings, "c")
        await drain(consumer, r, settings)
        assert consumer.stats["invalid"] >= 1 and consumer.stats["applied"] == 0
        assert await r.hget(LedgerKeys.default().applied, "neg") is None
        dead = await r.xrange(settings.billing_dead_letter_stream)
        assert "is negative" in decode_fields(dead[0][1])["reason"]

    run(redis_server.url, body)


def test_render_expiry_voids_the_reservation(redis_server: RedisServerProcess) -> None:
    """Render mode: a pending charge keeps its event with campaigns; when it expires unrendered, its
    reservation is voided (the budget released at once, not after RENDER_WINDOW_S + TTL)."""
    settings = ledger_settings(redis_server.url, billing_mode="render", render_window_s=1)

    async def body(r: aioredis.Redis, b: BudgetLedger) -> None:
        now = int(time.time() * 1000)
        expiry = reservation_expiry_ms(settings, now, render=True)
        assert expiry == now + (1 + settings.budget_reservation_ttl_s) * 1000
        assert await b.reserve_all([res("r1", 800, expires=expiry)], now) == [True]
        event = make_billing_event("r1", {"adv": 0.0008}, "USD", now_ms=now, campaigns={"adv": "c1"})
        pipe = r.pipeline(transaction=True)
        pending_commands(pipe, event, settings)
        await pipe.execute()
        render = RenderLedger(r, settings)
        assert await render.expire_due(now + 500) == 0
        assert await render.expire_due(now + 1_001) == 1
        [s] = await b.states(["c1"], [DAY], now + 1_002)
        assert (s.reserved_total, s.spent_total) == (0, 0)
        assert await b.void_all(["c1"], "r1", now + 1_003) == ["voided"]

    run(redis_server.url, body)


def test_noscript_after_script_flush(redis_server: RedisServerProcess) -> None:
    """A restarted Redis forgets scripts: the ledger loads budget.lua again and the call succeeds."""

    async def body(r: aioredis.Redis, b: BudgetLedger) -> None:
        assert await b.reserve_all([res("n1", 10)], NOW) == [True]
        await r.script_flush()
        assert await b.post_all(["c1"], "n1", [None], NOW) == ["posted"]

    run(redis_server.url, body)


def test_invalid_arguments_write_nothing(redis_server: RedisServerProcess) -> None:
    """budget.lua validates before its first write: a bad call errors and leaves the key untouched."""

    async def body(r: aioredis.Redis, b: BudgetLedger) -> None:
        sha = await b.sha()
        with pytest.raises(aioredis.ResponseError, match="amount"):
            await r.evalsha(sha, 1, budget_key("c1"), "reserve", NOW, "z", "-5", DAY, NOW + 1, "", "", 1)
        with pytest.raises(aioredis.ResponseError, match="pacing"):
            await r.evalsha(sha, 1, budget_key("c1"), "post", NOW, "z", "1", "nan", "1", 1)
        assert await r.exists(budget_key("c1")) == 0
        with pytest.raises(ValueError):
            BudgetLimits(daily_micro=2**53, total_micro=None)

    run(redis_server.url, body)


def test_trim_folds_campaign_spend_into_settled(redis_server: RedisServerProcess) -> None:
    """trim.lua removes applied markers older than the retention: it folds their campaign payments
    into `settled` (campaign:<id>), so reconcile still finds spent_total == billed payments."""
    settings = ledger_settings(
        redis_server.url, auction_deadline_s=0.5, billing_append_timeout_s=0.5, billing_retention_s=2
    )

    async def body(r: aioredis.Redis, b: BudgetLedger) -> None:
        now = int(time.time() * 1000)
        limits = BudgetLimits(None, 10_000_000)
        reservations = [res(f"t{i}", 1_000 * (i + 1), limits=limits, expires=now + 60_000) for i in range(5)]
        assert await b.reserve_all(reservations, now) == [True] * 5
        for i in range(5):
            event = make_billing_event(f"t{i}", {"adv": 0.001 * (i + 1)}, "USD", campaigns={"adv": "c1"})
            await r.xadd(settings.billing_stream, event.stream_fields())  # type: ignore[arg-type]
        await drain(LedgerConsumer(r, settings, "c"), r, settings)
        await asyncio.sleep(2.2)
        await r.xadd(settings.billing_stream, make_billing_event("fresh", {"z": 0.0}, "USD").stream_fields())  # type: ignore[arg-type]
        await drain(LedgerConsumer(r, settings, "c"), r, settings)
        await asyncio.sleep(1.1)
        result = await LedgerTrimmer(r, settings).trim_once()
        assert result.settled == 5
        assert await r.hget(LedgerKeys.default().settled, "campaign:c1") == "15000"
        report = await reconcile(r, settings)
        assert report.ok, report.differences
        [s] = await b.states(["c1"], [DAY], now)
        assert s.spent_total == 15_000

    run(redis_server.url, body)
