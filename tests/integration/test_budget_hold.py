"""Pre-authorisation holds (issue 33: BUDGET_HOLD_FACTOR) against a real Redis server process.

A campaign of a billed auction reserves a hold before the model work; a payment within it needs no
reservation on the reply path, a larger one grows it (atomic, refused past the limits); the post
captures the payment and releases the whole hold. The invariant kept throughout: spent + reserved never
passes a limit through reservations, and what is spent is exactly the payments billed.
"""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from app.ledger.budget import BudgetLedger, PacingStep, group_posts
from app.ledger.events import make_billing_event, parse_entry
from tests.fixtures_redis import RedisServerProcess
from tests.integration.test_budget import DAY, LIMITS, NOW, res, run


def test_a_hold_grows_in_place_within_the_limits_and_never_past_them(
    redis_server: RedisServerProcess,
) -> None:
    """A reservation under an auction id that holds less than asked grows by the difference (same record,
    counted once), is refused when the difference does not fit (the hold stays as it was), and asking
    for less than held changes nothing."""

    async def body(r: aioredis.Redis, b: BudgetLedger) -> None:
        assert await b.reserve_all([res("h1", 300)], NOW) == [True]
        assert await b.reserve_all([res("h1", 200)], NOW + 1) == [True]  # within the hold: nothing moves
        [s] = await b.states(["c1"], [DAY], NOW + 2)
        assert (s.reserved_today, s.reserved_total) == (300, 300)
        assert await b.reserve_all([res("h1", 700)], NOW + 3) == [True]  # grows by 400
        [s] = await b.states(["c1"], [DAY], NOW + 4)
        assert (s.reserved_today, s.reserved_total) == (700, 700)
        assert await b.reserve_all([res("h2", 200)], NOW + 5) == [True]
        assert await b.reserve_all([res("h1", 900)], NOW + 6) == [False]  # 900 + 200 > 1,000 daily
        [s] = await b.states(["c1"], [DAY], NOW + 7)
        assert (s.reserved_today, s.remaining(LIMITS)) == (900, 100)

    run(redis_server.url, body)


def test_a_post_captures_the_payment_and_releases_the_whole_hold(redis_server: RedisServerProcess) -> None:
    """The gateway's post and the ledger consumer's batch post both spend exactly the captured payment
    and release the whole hold; the pacing step sees the payment, not the hold."""

    async def body(r: aioredis.Redis, b: BudgetLedger) -> None:
        assert await b.reserve_all([res("p1", 800), res("p2", 150)], NOW) == [True, True]
        step = PacingStep(target_micro=100.0, epsilon=0.5, mu_max=9.0)
        assert await b.post_all(["c1"], "p1", [step], NOW + 1, captured=[120]) == ["posted"]
        [s] = await b.states(["c1"], [DAY], NOW + 2)
        assert (s.spent_today, s.reserved_today, s.charged_total) == (120, 150, 1)
        assert s.mu == pytest.approx(0.5 * (120 - 100) / 100)  # z = the payment
        posts = group_posts([("c1", "p2", None, 0)])
        (reply,) = await b._run([("c1", b.consumer_post_args(None, posts["c1", None], NOW + 3))])
        assert [x.decode() if isinstance(x, bytes) else x for x in reply] == ["posted"]
        [s] = await b.states(["c1"], [DAY], NOW + 4)
        assert (s.spent_today, s.reserved_today, s.auctions_today, s.charged_total) == (120, 0, 2, 1)

    run(redis_server.url, body)


def test_a_billing_events_posts_carry_each_campaigns_payment() -> None:
    """What the ledger consumer posts for an event: the payment of the campaign's owner is captured."""
    event = make_billing_event(
        "a9", {"adv-a": 1.25, "adv-b": 0.0}, "USD", campaigns={"adv-a": "ca", "adv-b": "cb"}, pacing={}
    )
    posts = sorted(parse_entry("1-0", event.stream_fields()).posts(), key=lambda post: post[0])
    assert [(c, a, amount) for c, a, _, amount in posts] == [("ca", "a9", 1_250_000), ("cb", "a9", 0)]
