"""BILLING_MODE=render: a pending charge, billed once by POST /auctions/{id}/render, or expired.

A real worker process (tiny-random), a real Redis server, the app in process (TestClient); the
kill test runs the ledger consumer as real processes SIGKILLed at random points. With a campaign, the
pending charge holds its budget reservation and the render posts it with the pacing step.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from fastapi.testclient import TestClient

from app.gateway.app import create_app
from app.ledger.budget import budget_key
from app.ledger.keys import ADVERTISER_ACCOUNT_PREFIX, PLATFORM_ACCOUNT, LedgerKeys
from app.ledger.reader import LedgerReader
from app.ledger.reconcile import reconcile
from app.settings import Settings
from tests.fixtures_redis import RedisServerProcess
from tests.fixtures_worker import WorkerProcess
from tests.integration.test_gateway import auction_body, make_settings, stream_length
from tests.integration.test_ledger_faults import ConsumerProcess

WINDOW_S = 2


def body(seed: int, **overrides: Any) -> dict[str, Any]:
    return auction_body(
        **{"candidates": 2, "max_tokens": 4, "include_candidates": False, "seed": seed, **overrides}
    )


def run(url: str, coro_fn: Any) -> Any:
    async def main() -> Any:
        client = aioredis.Redis.from_url(url, decode_responses=True)
        try:
            return await coro_fn(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


@pytest.fixture(scope="module")
def client(
    tiny_worker: WorkerProcess, redis_process: RedisServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    settings = make_settings(
        [tiny_worker.url],
        redis_process.url,
        tmp_path_factory.mktemp("render"),
        billing_mode="render",
        render_window_s=WINDOW_S,
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_render_bills_once_and_unrendered_charges_expire(
    client: TestClient, redis_process: RedisServerProcess
) -> None:
    before = stream_length(redis_process.url)
    served = client.post("/auction", json=body(201))
    assert served.status_code == 200, served.text
    auction = served.json()
    assert auction["billing"] == "pending"
    assert stream_length(redis_process.url) == before  # not in the ledger yet
    assert client.get(f"/auctions/{auction['auction_id']}").json()["billing"] == "pending"

    rendered = client.post(f"/auctions/{auction['auction_id']}/render")
    assert rendered.status_code == 200, rendered.text
    assert rendered.json()["billed_now"] is True
    again = client.post(f"/auctions/{auction['auction_id']}/render")
    assert again.status_code == 200 and again.json()["billed_now"] is False
    assert again.json()["stream_id"] == rendered.json()["stream_id"]
    assert stream_length(redis_process.url) == before + 1
    assert client.get(f"/auctions/{auction['auction_id']}").json()["billing"] == "billed"

    unrendered = client.post("/auction", json=body(202)).json()
    time.sleep(WINDOW_S + 1.5)  # the embedded consumer sweeps about once a second
    assert client.get(f"/auctions/{unrendered['auction_id']}").json()["billing"] == "expired"
    late = client.post(f"/auctions/{unrendered['auction_id']}/render")
    assert late.status_code == 410 and "RENDER_WINDOW_S" in late.json()["detail"]
    assert stream_length(redis_process.url) == before + 1

    summary = client.get("/ledger/summary").json()
    assert summary["render"]["billed"] >= 1 and summary["render"]["expired"] >= 1
    test_auction = client.post("/auction", json=body(203, test=True)).json()
    assert test_auction["billing"] == "test"
    assert client.post(f"/auctions/{test_auction['auction_id']}/render").status_code == 409
    assert client.post("/auctions/0123abcd/render").status_code == 404

    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]

    async def check(redis_client: aioredis.Redis) -> None:
        deadline = time.monotonic() + 20
        while True:
            report = await reconcile(redis_client, settings)
            if (report.ok and report.in_flight == 0) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert report.ok, report.differences
        assert report.render.get("billed", 0) >= 1 and report.render.get("expired", 0) >= 1
        applied = await redis_client.hexists(LedgerKeys.default().applied, auction["auction_id"])
        assert applied and not await redis_client.hexists(
            LedgerKeys.default().applied, unrendered["auction_id"]
        )

    run(redis_process.url, check)


def test_a_replay_says_the_charge_state_now(client: TestClient, redis_process: RedisServerProcess) -> None:
    """Invariant: the replay of a render-mode auction (same Idempotency-Key, same body) says its charge's
    state as `GET /auctions/{id}` does at that moment (pending; billed once rendered; expired past
    RENDER_WINDOW_S), the rest of the answer as first given, and bills nothing."""
    expired_key = {"Idempotency-Key": f"render-replay-expired-{time.time_ns()}"}
    unrendered = client.post("/auction", json=body(212), headers=expired_key).json()
    key = {"Idempotency-Key": f"render-replay-{time.time_ns()}"}
    first = client.post("/auction", json=body(211), headers=key)
    assert first.status_code == 200 and first.json()["billing"] == "pending", first.text
    auction_id = first.json()["auction_id"]
    before = stream_length(redis_process.url)

    def replay(key: dict[str, str], seed: int) -> dict[str, Any]:
        answer = client.post("/auction", json=body(seed), headers=key)
        assert answer.status_code == 200 and answer.headers["Idempotent-Replayed"] == "true", answer.text
        replayed: dict[str, Any] = answer.json()
        state = client.get(f"/auctions/{replayed['auction_id']}").json()["billing"]
        assert replayed["billing"] == state, (replayed["billing"], state)
        return replayed

    assert replay(key, 211) == first.json()
    assert client.post(f"/auctions/{auction_id}/render").json()["billed_now"] is True
    assert replay(key, 211) == {**first.json(), "billing": "billed"}
    time.sleep(WINDOW_S + 1.5)  # the embedded consumer sweeps about once a second
    assert replay(expired_key, 212) == {**unrendered, "billing": "expired"}
    assert stream_length(redis_process.url) == before + 1  # the one render, no replay


def test_render_mode_under_sigkilled_consumers_bills_each_rendered_charge_once(
    tiny_worker: WorkerProcess, redis_server: RedisServerProcess, tmp_path: Path
) -> None:
    rng = random.Random(14)
    settings = make_settings(
        [tiny_worker.url],
        redis_server.url,
        tmp_path,
        billing_mode="render",
        render_window_s=WINDOW_S,
        billing_embedded_consumer=False,
    )
    consumer_settings: dict[str, Any] = {
        "billing_batch_size": 3,
        "billing_block_ms": 50,
        "billing_claim_idle_ms": 100,
        "billing_fault_pause_before_ack_s": 0.05,
    }
    with TestClient(create_app(settings)) as gateway:
        to_expire = [gateway.post("/auction", json=body(300 + i)).json() for i in range(4)]
        to_render: list[dict[str, Any]] = []
        kills = mid_stream = 0
        for round_index, count in enumerate((3, 3, 2)):
            consumer = ConsumerProcess(redis_server.url, f"c{round_index % 2}", tmp_path, **consumer_settings)
            try:
                assert consumer.wait_for_line("started", timeout_s=30), "".join(consumer.log)
                for _ in range(count):  # each served, then rendered (twice) within its window
                    auction = gateway.post("/auction", json=body(310 + len(to_render))).json()
                    to_render.append(auction)
                    for _ in range(2):  # a retried render bills nothing more
                        assert gateway.post(f"/auctions/{auction['auction_id']}/render").status_code == 200
                time.sleep(rng.uniform(0.0, 0.1))  # reading, applying, pausing before XACK
            finally:
                consumer.kill()
                kills += 1
            state = run(redis_server.url, lambda r: LedgerReader(r, settings).summary())
            mid_stream += state["pending"] > 0 or state["lag"] > 0
            time.sleep(0.12)
        time.sleep(WINDOW_S + 0.2)  # the rest are past their window: the next consumer expires them
        late = gateway.post(f"/auctions/{to_expire[0]['auction_id']}/render")
        assert late.status_code == 410

    final = ConsumerProcess(
        redis_server.url, "final", tmp_path, billing_block_ms=50, billing_claim_idle_ms=100
    )
    try:

        async def drained(redis_client: aioredis.Redis) -> dict[str, Any]:
            return await LedgerReader(redis_client, settings).summary()

        deadline = time.monotonic() + 30
        while True:
            summary = run(redis_server.url, drained)
            if summary["pending"] == 0 and summary["lag"] == 0 and summary["render"]["pending"] == 0:
                break
            assert time.monotonic() < deadline, summary
            time.sleep(0.1)
        assert final.wait_for_line("started", timeout_s=30), "".join(final.log)
        assert final.terminate() == 0
    finally:
        final.kill()

    assert kills == 3 and mid_stream >= 1
    assert summary["events_applied"] == 8 and summary["stream_length"] == 8
    assert summary["render"] == {"pending": 0, "billed": 8, "expired": 4}

    async def verify(redis_client: aioredis.Redis) -> None:
        keys = LedgerKeys.default()
        balances = {k: int(v) for k, v in (await redis_client.hgetall(keys.balances)).items()}
        expected: dict[str, int] = {}
        for auction in to_render:
            record = await redis_client.get(f"mosaic:auction:{auction['auction_id']}")
            assert record is not None
            for advertiser, micro in json.loads(record)["payments_micro"].items():
                expected[ADVERTISER_ACCOUNT_PREFIX + advertiser] = (
                    expected.get(ADVERTISER_ACCOUNT_PREFIX + advertiser, 0) - micro
                )
                expected[PLATFORM_ACCOUNT] = expected.get(PLATFORM_ACCOUNT, 0) + micro
        assert {k: v for k, v in balances.items() if v or k in expected} == expected
        report = await reconcile(redis_client, settings)
        assert report.ok, report.differences
        assert report.render == {"billed": 8, "expired": 4}

    run(redis_server.url, verify)


DAILY_MICRO = 10**12


def _stats(client: TestClient, campaign_id: str) -> dict[str, Any]:
    answer = client.get(f"/campaigns/{campaign_id}/stats")
    assert answer.status_code == 200, answer.text
    stats: dict[str, Any] = answer.json()
    return stats


def test_a_rendered_charge_posts_its_reservation_with_the_pacing_step(
    client: TestClient, redis_process: RedisServerProcess
) -> None:
    """Invariant: a pending charge's amount is reserved (held, not spent) until rendered; the render
    moves it to spent and applies the campaign's pacing step exactly once (μ = 1 → about 1 − ε), and
    the ledger consumer, applying the rendered event, posts nothing twice."""
    created = client.post(
        "/campaigns",
        json={
            "id": "render-pace",
            "owner": "render-owner",
            "name": "StrumMaster",
            "description": "selling guitars and lessons",
            "value_scale": 1000.0,
            "budget": {"daily_micro": DAILY_MICRO},
        },
    )
    assert created.status_code == 201, created.text
    raw = redis.Redis.from_url(redis_process.url, decode_responses=True)
    raw.hset(budget_key("render-pace"), "mu", "1.0")  # α = 0.5: spending far below target lowers μ
    body = auction_body(candidates=8, max_tokens=24, seed=11, advertisers=[], campaigns=["render-pace"])
    served = client.post("/auction", json=body)
    assert served.status_code == 200, served.text
    auction = served.json()
    assert auction["billing"] == "pending"
    (row,) = [a for a in auction["advertisers"] if a["id"] == "render-owner"]
    charged = client.get(f"/auctions/{auction['auction_id']}").json()["payments_micro"]["render-owner"]
    assert charged > 0, (auction["advertisers"], auction.get("excluded"))
    held = _stats(client, "render-pace")
    assert held["reserved_micro"] == charged and held["spent_total_micro"] == 0

    mu_before = float(raw.hget(budget_key("render-pace"), "mu") or 0.0)
    assert mu_before == 1.0  # the auction did not step it: the render does
    assert client.post(f"/auctions/{auction['auction_id']}/render").json()["billed_now"] is True
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the embedded consumer applies the event (and posts: a no-op)
        stats = _stats(client, "render-pace")
        if raw.hexists("mosaic:ledger:applied", auction["auction_id"]):
            break
        time.sleep(0.05)
    assert stats["spent_total_micro"] == charged and stats["reserved_micro"] == 0
    assert stats["auctions_entered"] == 1 and stats["auctions_charged"] == 1
    mu_after = float(raw.hget(budget_key("render-pace"), "mu") or 0.0)
    # one step, μ − ε(ρ − z)/ρ with z ≪ ρ (a budget far above the spend): about 1 − ε = 0.8, once
    assert 0.79 < mu_after < 0.81
    assert row["pacing_multiplier"] == 0.5
