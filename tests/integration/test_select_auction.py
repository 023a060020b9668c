"""`POST /auction` with `select`: the service chooses the campaigns (issue 34), end to end in process:
a real tiny-random worker process, a real Redis server of this module's own (the catalog holds every
campaign in it), the real all-MiniLM-L6-v2 embedding model, the app (TestClient).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from app.gateway.app import create_app
from app.ledger.budget import budget_key
from tests.fixtures_redis import RedisServerProcess, start_redis_server
from tests.fixtures_worker import WorkerProcess
from tests.integration.test_gateway import make_settings

pytestmark = pytest.mark.timeout(300)

CAMPAIGNS = [
    ("sel-guitar", "strum", "StrumMaster", "selling guitars, tuners, and learning materials for beginners"),
    ("sel-lessons", "chordify", "Chordify", "offering online guitar lessons and interactive practice tools"),
    ("sel-skin", "hydra", "HydraSkin", "providing moisturizers and serums for dry skin"),
    ("sel-desk", "spacemakers", "SpaceMakers", "offering ergonomic furniture and home office setups"),
]


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServerProcess]:
    server = start_redis_server(Path(tmp_path_factory.mktemp("select-redis")))
    try:
        yield server
    finally:
        server.__exit__(None, None, None)


@pytest.fixture(scope="module")
def client(
    tiny_worker: WorkerProcess, own_redis: RedisServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    settings = make_settings([tiny_worker.url], own_redis.url, tmp_path_factory.mktemp("select"))
    with TestClient(create_app(settings)) as test_client:
        for campaign_id, owner, name, description in CAMPAIGNS:
            body = {
                "id": campaign_id,
                "owner": owner,
                "name": name,
                "description": description,
                "value_scale": 1.0,
                "budget": {"total_micro": 10**12},
            }
            assert test_client.post("/campaigns", json=body).status_code == 201
        yield test_client


def auction(client: TestClient, query: str, seed: int = 1, **fields: Any) -> dict[str, Any]:
    body = {"query": query, "candidates": 2, "max_tokens": 6, "seed": seed, "select": {"max": 2}, **fields}
    response = client.post("/auction", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_select_enters_the_relevant_campaigns_and_reports_what_it_considered(client: TestClient) -> None:
    """Invariant: `select: {max: 2}` enters the two campaigns relevant to the query (guitars), through
    the same resolver as `campaigns` (their rows carry campaign_id and pacing), bills them, and the
    answer's `selection` lists every campaign considered with its relevance and why it was left out."""
    answer = auction(client, "Learning to play the guitar.")
    entered = {row["campaign_id"] for row in answer["advertisers"]}
    assert entered == {"sel-guitar", "sel-lessons"}, answer["advertisers"]
    assert answer["billing"] == "billed" and "no_fill" not in answer
    report = answer["selection"]
    considered = {c["campaign_id"]: c for c in report["considered"]}
    assert considered["sel-guitar"]["selected"] and considered["sel-lessons"]["selected"]
    assert considered["sel-guitar"]["relevance"] > considered.get("sel-skin", {"relevance": -1})["relevance"]
    assert report["embedding_ms"] > 0 and report.get("sensitive") is None


def test_value_scales_never_change_who_is_selected(client: TestClient) -> None:
    """Invariant: bids cannot buy eligibility — with one campaign's value scale raised 1000× and
    another's lowered, the same query selects the same campaigns with the same relevances."""
    before = auction(client, "Learning to play the guitar.", seed=2)["selection"]
    for campaign_id, value_scale in (("sel-skin", 1000.0), ("sel-guitar", 0.001)):
        current = client.get(f"/campaigns/{campaign_id}")
        patched = client.patch(
            f"/campaigns/{campaign_id}",
            json={"value_scale": value_scale},
            headers={"If-Match": current.headers["ETag"]},
        )
        assert patched.status_code == 200, patched.text
    time.sleep(1.0)  # the catalog's refresh (SELECTION_REFRESH_S = 0.5 s)
    after = auction(client, "Learning to play the guitar.", seed=2)["selection"]
    pick = [(c["campaign_id"], c["selected"], round(c["relevance"], 6)) for c in before["considered"]]
    assert pick == [(c["campaign_id"], c["selected"], round(c["relevance"], 6)) for c in after["considered"]]


def test_a_sensitive_query_is_an_organic_no_fill_before_any_campaign_is_read(client: TestClient) -> None:
    """Invariant: a query on a sensitive topic gets no ads — one organic reply, nothing billed,
    `no_fill.reason` sensitive_topic naming the category — even though campaigns exist."""
    answer = auction(client, "I have been feeling depressed and anxious for weeks, what should I do?")
    assert answer["no_fill"]["reason"] == "sensitive_topic" and answer["billing"] == "none"
    assert answer["advertisers"] == [] and answer["selection"]["sensitive"]["category"]


def test_nothing_relevant_and_all_out_of_budget_are_no_fills_with_their_reason(
    client: TestClient, own_redis: RedisServerProcess
) -> None:
    """Invariant: a query no campaign is relevant to answers organically (`no_relevant_campaign`); when
    the relevant ones are out of budget the selection says so (`all_out_of_budget`), nothing billed."""
    answer = auction(client, "What is the boiling point of liquid nitrogen in kelvin?")
    assert answer["no_fill"]["reason"] == "no_relevant_campaign" and answer["billing"] == "none"
    raw = redis.Redis.from_url(own_redis.url)
    for campaign_id in ("sel-desk",):
        raw.hset(budget_key(campaign_id), "spent_total", str(10**12))
    answer = auction(client, "How should I set up an ergonomic home office desk?")
    assert answer["no_fill"]["reason"] == "all_out_of_budget", answer


def test_a_campaign_at_its_frequency_cap_is_replaced_by_the_next_relevant_one(client: TestClient) -> None:
    """Invariant: with a `user_id`, a campaign this user has capped is not selected (reason
    frequency_capped) and the next relevant campaign takes its place; with every relevant one capped the
    answer is the `all_capped` no-fill. Caps count reservations too, so this holds at once."""
    for campaign_id in ("sel-guitar", "sel-lessons"):
        current = client.get(f"/campaigns/{campaign_id}")
        patched = client.patch(
            f"/campaigns/{campaign_id}",
            json={"frequency_cap": {"max_auctions": 1, "per_seconds": 3600}},
            headers={"If-Match": current.headers["ETag"]},
        )
        assert patched.status_code == 200, patched.text
    time.sleep(1.0)  # the catalog's refresh
    query, user = "Learning to play the guitar.", {"user_id": "capped-user-1", "select": {"max": 1}}
    first = auction(client, query, seed=5, **user)
    (taken,) = [row["campaign_id"] for row in first["advertisers"]]
    second = auction(client, query, seed=6, **user)
    (other,) = [row["campaign_id"] for row in second["advertisers"]]
    assert {taken, other} == {"sel-guitar", "sel-lessons"}
    reasons = {c["campaign_id"]: c.get("reason") for c in second["selection"]["considered"]}
    assert reasons[taken] == "frequency_capped"
    third = auction(client, query, seed=7, **user)
    assert third["no_fill"]["reason"] == "all_capped" and third["billing"] == "none"
    fresh = auction(client, query, seed=8, user_id="another-user", select={"max": 1})
    assert len(fresh["advertisers"]) == 1  # caps are per user
