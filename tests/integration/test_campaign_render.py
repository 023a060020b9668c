"""BILLING_MODE=render with a campaign: the pending charge holds its reservation; the render posts it with
the campaign's pacing step (μ moves once), the ledger consumer's post of the same event changes nothing.

A real worker process (tiny-random), a real Redis server, the app in process (TestClient).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from app.gateway.app import create_app
from app.ledger.budget import budget_key
from tests.fixtures_redis import RedisServerProcess
from tests.fixtures_worker import WorkerProcess
from tests.integration.test_gateway import auction_body, make_settings

DAILY_MICRO = 10**12


@pytest.fixture(scope="module")
def client(
    tiny_worker: WorkerProcess, redis_process: RedisServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    settings = make_settings(
        [tiny_worker.url],
        redis_process.url,
        tmp_path_factory.mktemp("render-campaign"),
        billing_mode="render",
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


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
