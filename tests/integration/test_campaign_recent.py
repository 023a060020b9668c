"""Entry from the gateway's recent read of a campaign (CAMPAIGN_CACHE_S), the charge from a fresh one.

A real tiny-random worker process, a real Redis server, the app in process (TestClient). "Another
gateway" is a second `CampaignStore` on the same Redis: its writes do not drop this gateway's cached
read, so the auction right after them decides entry from the stale read — which must never reach a
charge (docs/DESIGN.md § Campaigns, budgets and pacing: the recheck beside the model work).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from fastapi.testclient import TestClient

from app.campaigns.store import CampaignStore
from app.contract.campaign import CampaignPatch
from app.gateway.app import create_app
from app.ledger.budget import BudgetLedger
from tests.fixtures_redis import RedisServerProcess
from tests.fixtures_worker import WorkerProcess
from tests.integration.test_campaign_auction import OTHER, assert_replays, auction, create, row_of
from tests.integration.test_gateway import make_settings

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def client(
    tiny_worker: WorkerProcess, redis_process: RedisServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    settings = make_settings([tiny_worker.url], redis_process.url, tmp_path_factory.mktemp("recent"))
    with TestClient(create_app(settings)) as test_client:
        recent = test_client.app.state.auctions.campaign_store.recent  # type: ignore[attr-defined]
        recent.max_age_s = 3600.0  # a cached read never ages out here: the tests decide what is stale
        yield test_client


def patch_elsewhere(
    client: TestClient, redis_url: str, campaign_id: str, version: int, **fields: Any
) -> None:
    """PATCH the campaign as another gateway would (this gateway's cached read is not dropped)."""
    settings = client.app.state.settings  # type: ignore[attr-defined]

    async def body() -> None:
        connection = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            await CampaignStore(connection, settings).update(campaign_id, CampaignPatch(**fields), version)
        finally:
            await connection.aclose()

    asyncio.run(body())


def settled_spend(client: TestClient, redis_url: str, campaign_id: str) -> tuple[int, int]:
    """(spent in total, reserved) once nothing is reserved (the ledger consumer posted), within 10 s."""
    settings = client.app.state.settings  # type: ignore[attr-defined]

    async def state() -> tuple[int, int]:
        connection = aioredis.Redis.from_url(redis_url)
        try:
            day = time.strftime("%Y-%m-%d", time.gmtime())
            (s,) = await BudgetLedger(connection, settings).states(
                [campaign_id], [day], int(time.time() * 1000)
            )
            return s.spent_total, s.reserved_total
        finally:
            await connection.aclose()

    deadline = time.monotonic() + 10
    spent, reserved = asyncio.run(state())
    while reserved and time.monotonic() < deadline:
        time.sleep(0.05)
        spent, reserved = asyncio.run(state())
    return spent, reserved


def test_a_campaign_paused_by_another_gateway_is_withdrawn_and_never_charged(
    client: TestClient, redis_process: RedisServerProcess
) -> None:
    """Invariant: a campaign that entered from this gateway's cached read but is paused when it is read
    again beside the model work is withdrawn: listed in `excluded` as paused, out of the draw (payment
    exactly 0), nothing reserved, posted or spent on its budget; the record still replays by seed."""
    created = create(client, "recent-pause", "recent-pauser", budget={"total_micro": 10**12})
    first = auction(client, 31, advertisers=[OTHER], campaigns=["recent-pause"])  # fills the cache
    assert row_of(first, "recent-pauser")["campaign_id"] == "recent-pause"
    spent_before, _ = settled_spend(client, redis_process.url, "recent-pause")
    patch_elsewhere(client, redis_process.url, "recent-pause", created["version"], status="paused")
    answer = auction(client, 32, advertisers=[OTHER], campaigns=["recent-pause"])
    assert answer["excluded"] == [{"campaign_id": "recent-pause", "reason": "paused"}]
    row = row_of(answer, "recent-pauser")  # its text was in the prompts: it stays a row, charged 0
    assert row.get("campaign_id") is None and row["payment"] == 0.0
    record = assert_replays(client, answer)
    assert record["payments_micro"]["recent-pauser"] == 0 and not record.get("budgets")
    spent, reserved = settled_spend(client, redis_process.url, "recent-pause")
    assert (spent, reserved) == (spent_before, 0)
    third = auction(client, 33, advertisers=[OTHER], campaigns=["recent-pause"])  # the fresh read: out
    assert third["excluded"] == [{"campaign_id": "recent-pause", "reason": "paused"}]
    assert [r["id"] for r in third["advertisers"]] == [OTHER["id"]]


def test_a_budget_lowered_by_another_gateway_binds_the_auction_that_entered_from_the_cache(
    client: TestClient, redis_process: RedisServerProcess
) -> None:
    """Invariant: the budget limits a charge is fitted and reserved against are those read beside the
    model work, never the cached ones: a total budget lowered elsewhere to a few micro-units (the cached
    read still says 10^12) caps the payment of the next auction, and the campaign's spend never passes
    the new limit."""
    created = create(client, "recent-cut", "recent-cutter", budget={"total_micro": 10**12})
    first = auction(client, 41, advertisers=[OTHER], campaigns=["recent-cut"])  # fills the cache
    spent_before, _ = settled_spend(client, redis_process.url, "recent-cut")
    assert spent_before == answer_micro(client, first, "recent-cutter") > 0
    limit = spent_before + 3
    patch_elsewhere(
        client, redis_process.url, "recent-cut", created["version"], budget={"total_micro": limit}
    )
    answer = auction(client, 42, advertisers=[OTHER], campaigns=["recent-cut"])
    assert row_of(answer, "recent-cutter")["campaign_id"] == "recent-cut"  # it entered (cached read)
    (budget,) = assert_replays(client, answer)["budgets"]
    assert budget["remaining_micro"] == 3 and budget["budget_multiplier"] < 1.0
    assert answer_micro(client, answer, "recent-cutter") <= 3
    spent, reserved = settled_spend(client, redis_process.url, "recent-cut")
    assert reserved == 0 and spent <= limit


def answer_micro(client: TestClient, answer: dict[str, Any], advertiser_id: str) -> int:
    micro: int = client.get(f"/auctions/{answer['auction_id']}").json()["payments_micro"][advertiser_id]
    return micro


def test_a_write_through_this_gateway_is_seen_by_its_next_auction(client: TestClient) -> None:
    """Invariant: a change made through this gateway drops its cached read at once: the next auction
    leaves a campaign just paused here out before any model work (not in the prompts at all)."""
    created = create(client, "recent-local", "recent-local-owner")
    auction(client, 51, advertisers=[OTHER], campaigns=["recent-local"])  # fills the cache
    headers = {"If-Match": f'"{created["version"]}"'}
    assert (
        client.patch("/campaigns/recent-local", json={"status": "paused"}, headers=headers).status_code == 200
    )
    answer = auction(client, 52, advertisers=[OTHER], campaigns=["recent-local"])
    assert answer["excluded"] == [{"campaign_id": "recent-local", "reason": "paused"}]
    assert [r["id"] for r in answer["advertisers"]] == [OTHER["id"]]


def test_a_cap_changed_by_another_gateway_withdraws_the_campaign_and_frees_its_slot(
    client: TestClient, redis_process: RedisServerProcess
) -> None:
    """Invariant: a frequency cap slot taken under a cached cap that changed since is never billed: the
    campaign is withdrawn (`frequency_capped`, charged 0) and its slot voided at once, so the user's next
    auction counts only what was billed under the new cap."""
    cap = {"max_auctions": 5, "per_seconds": 3600}
    created = create(client, "recent-cap", "recent-capper", frequency_cap=cap)
    auction(client, 61, advertisers=[OTHER], campaigns=["recent-cap"])  # fills the cache (no user: no slot)
    patch_elsewhere(
        client,
        redis_process.url,
        "recent-cap",
        created["version"],
        frequency_cap={"max_auctions": 1, "per_seconds": 3600},
    )
    answer = auction(client, 62, advertisers=[OTHER], campaigns=["recent-cap"], user_id="u-recent")
    assert answer["excluded"] == [{"campaign_id": "recent-cap", "reason": "frequency_capped"}]
    assert row_of(answer, "recent-capper")["payment"] == 0.0
    # the fresh read is cached now; the voided slot does not count against the new cap of 1
    again = auction(client, 63, advertisers=[OTHER], campaigns=["recent-cap"], user_id="u-recent")
    assert row_of(again, "recent-capper")["campaign_id"] == "recent-cap" and "excluded" not in again
