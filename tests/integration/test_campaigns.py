"""The campaign registry over HTTP: real `mosaic serve` processes, one real Redis (AOF), real keys.

Two keyed gateways (A and B) and one with auth off share one Redis server and one tiny-random worker.
Keys: a platform key, and advertiser keys for `alpha7` and `bravo7`.

Invariants: a campaign created through A is read, changed and archived through B with the change
visible within 1 s (no process-local state); PATCH needs If-Match (428 without) and of two concurrent
PATCHes from one version exactly one wins (the other 412, the ETag the winner's); every write bumps the
version and the ETag is `"<version>"`; paging in creation order visits every campaign once with
`limit` ≤ 100 and an opaque cursor (a forged cursor is 422 naming `cursor`); an advertiser key sees and
changes only its own campaigns (403 for another owner's, creating one included, listing another
owner's included), a platform key must name the owner (422 naming `owner`); bad input is a 422 naming
the field (naive date-time, unknown zone, end before start, no budget limit, bad id, text that renders
to nothing); archived is final (409); a campaign survives a restart of Redis (AOF).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fixtures_gateway import GatewayProcess, start_gateway_process
from tests.fixtures_redis import RedisServerProcess
from tests.fixtures_worker import WorkerProcess

PLATFORM_KEY = "campaign-test-platform-key"
ALPHA_KEY = "campaign-test-alpha-key"
BRAVO_KEY = "campaign-test-bravo-key"
PLATFORM = {"Authorization": f"Bearer {PLATFORM_KEY}"}
ALPHA = {"Authorization": f"Bearer {ALPHA_KEY}"}
BRAVO = {"Authorization": f"Bearer {BRAVO_KEY}"}


def body(**changes: Any) -> dict[str, Any]:
    return {
        "name": "StrumMaster",
        "description": "selling guitars and lessons",
        "value_scale": 0.05,
        "budget": {"daily_micro": 5_000_000, "total_micro": 50_000_000},
        "schedule": {"start": "2026-03-01T00:00:00+01:00", "time_zone": "Europe/Paris"},
        **changes,
    }


@pytest.fixture(scope="module")
def gateways(
    tiny_worker: WorkerProcess, redis_process: RedisServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, GatewayProcess]]:
    keys = {
        "API_KEYS": PLATFORM_KEY,
        "ADVERTISER_API_KEYS": json.dumps({"alpha7": [ALPHA_KEY], "bravo7": [BRAVO_KEY]}),
    }
    started: dict[str, GatewayProcess] = {}
    try:
        for name, env in (("a", keys), ("b", keys), ("open", {"API_KEYS": ""})):
            started[name] = start_gateway_process(
                tiny_worker.url, redis_process.url, tmp_path_factory.mktemp(f"campaigns-{name}"), **env
            )
        yield started
    finally:
        for gateway in started.values():
            gateway.stop()


@pytest.fixture(scope="module")
def a(gateways: dict[str, GatewayProcess]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateways["a"].url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def b(gateways: dict[str, GatewayProcess]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateways["b"].url, timeout=30) as client:
        yield client


def create(client: httpx.Client, headers: dict[str, str], **changes: Any) -> dict[str, Any]:
    response = client.post("/campaigns", json=body(**changes), headers=headers)
    assert response.status_code == 201, response.text
    campaign: dict[str, Any] = response.json()
    assert response.headers["Location"] == f"/campaigns/{campaign['id']}"
    assert response.headers["ETag"] == '"1"' and campaign["version"] == 1
    return campaign


def test_crud_across_two_gateways(a: httpx.Client, b: httpx.Client) -> None:
    """Created through A, read through B; changed through B (If-Match), seen through A within 1 s;
    archived; archived is final (409)."""
    campaign = create(a, PLATFORM, owner="alpha7", id="crud-1")
    assert campaign["owner"] == "alpha7" and campaign["status"] == "active"
    read = b.get("/campaigns/crud-1", headers=PLATFORM)
    assert read.status_code == 200 and read.json() == campaign and read.headers["ETag"] == '"1"'

    changed = b.patch(
        "/campaigns/crud-1",
        json={"status": "paused", "value_scale": 0.1},
        headers={**PLATFORM, "If-Match": '"1"'},
    )
    assert changed.status_code == 200, changed.text
    assert changed.headers["ETag"] == '"2"' and changed.json()["status"] == "paused"
    seen_at = time.monotonic()
    while (seen := a.get("/campaigns/crud-1", headers=PLATFORM).json())["version"] != 2:
        assert time.monotonic() - seen_at < 1.0, "gateway A did not see B's change within 1 s"
        time.sleep(0.05)
    assert seen["value_scale"] == 0.1 and seen["name"] == "StrumMaster"

    archived = a.post("/campaigns/crud-1/archive", headers=PLATFORM)
    assert archived.status_code == 200 and archived.json()["status"] == "archived"
    assert archived.headers["ETag"] == '"3"'
    again = b.patch("/campaigns/crud-1", json={"status": "active"}, headers={**PLATFORM, "If-Match": '"3"'})
    assert again.status_code == 409, again.text
    assert a.post("/campaigns", json=body(owner="alpha7", id="crud-1"), headers=PLATFORM).status_code == 409


def test_if_match_required_and_lost_update_refused(a: httpx.Client, b: httpx.Client) -> None:
    """No If-Match: 428. A stale one: 412 with the current ETag. Two concurrent PATCHes from the same
    version, through two gateways: exactly one wins, the other is 412, and the stored campaign is the
    winner's."""
    create(a, PLATFORM, owner="alpha7", id="race-1")
    assert a.patch("/campaigns/race-1", json={"name": "X"}, headers=PLATFORM).status_code == 428
    for round_ in range(5):
        version = a.get("/campaigns/race-1", headers=PLATFORM).json()["version"]

        async def race(version: int = version, round_: int = round_) -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=30) as client:
                return list(
                    await asyncio.gather(
                        *(
                            client.patch(
                                f"{gateway.base_url}/campaigns/race-1",
                                json={"name": f"Writer{name}{round_}"},
                                headers={**PLATFORM, "If-Match": f'"{version}"'},
                            )
                            for name, gateway in (("A", a), ("B", b))
                        )
                    )
                )

        answers = asyncio.run(race())
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses == [200, 412], [answer.text for answer in answers]
        winner = next(answer for answer in answers if answer.status_code == 200).json()
        loser = next(answer for answer in answers if answer.status_code == 412)
        assert loser.headers["ETag"] == f'"{version + 1}"' == f'"{winner["version"]}"'
        assert a.get("/campaigns/race-1", headers=PLATFORM).json()["name"] == winner["name"]
    stale = a.patch("/campaigns/race-1", json={"name": "Late"}, headers={**PLATFORM, "If-Match": '"1"'})
    assert stale.status_code == 412 and stale.headers["ETag"] == '"6"'


def test_paging_visits_every_campaign_once_in_creation_order(a: httpx.Client) -> None:
    """One owner's 23 campaigns through pages of 5 (and the platform listing through pages of 7):
    each once, in creation order; the last page's cursor is null; a forged cursor is 422 naming it;
    a limit over 100 is 422."""
    made = [create(a, PLATFORM, owner="pager7", id=f"page-{i:02d}")["id"] for i in range(23)]
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"owner": "pager7", "limit": 5, **({"cursor": cursor} if cursor else {})}
        page = a.get("/campaigns", params=params, headers=PLATFORM).json()
        seen += [campaign["id"] for campaign in page["campaigns"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == made
    every: list[str] = []
    cursor = None
    while True:
        page = a.get(
            "/campaigns", params={"limit": 7, **({"cursor": cursor} if cursor else {})}, headers=PLATFORM
        )
        every += [campaign["id"] for campaign in page.json()["campaigns"]]
        if (cursor := page.json()["next_cursor"]) is None:
            break
    assert len(every) == len(set(every)) and set(made) <= set(every)
    forged = a.get("/campaigns", params={"cursor": "bm90LWEtY3Vyc29y"}, headers=PLATFORM)
    assert forged.status_code == 422 and forged.json()["detail"][0]["loc"] == ["query", "cursor"]
    assert a.get("/campaigns", params={"limit": 101}, headers=PLATFORM).status_code == 422


def test_advertiser_keys_see_and_change_only_their_own(a: httpx.Client, b: httpx.Client) -> None:
    """alpha7's key creates for alpha7 (owner omitted or its own), never for bravo7 (403); bravo7's key
    cannot read, change, archive or list alpha7's campaign (403); listings show only one's own; a
    platform key must name the owner (422 naming it); auth on and no key: 401."""
    own = create(a, ALPHA)
    assert own["owner"] == "alpha7"
    assert create(b, ALPHA, owner="alpha7")["owner"] == "alpha7"
    assert a.post("/campaigns", json=body(owner="bravo7"), headers=ALPHA).status_code == 403
    path = f"/campaigns/{own['id']}"
    assert b.get(path, headers=BRAVO).status_code == 403
    assert b.patch(path, json={"name": "Mine"}, headers={**BRAVO, "If-Match": '"1"'}).status_code == 403
    assert b.post(f"{path}/archive", headers=BRAVO).status_code == 403
    assert b.get("/campaigns", params={"owner": "alpha7"}, headers=BRAVO).status_code == 403
    create(b, BRAVO, id="bravo-own")
    for key, owner in ((ALPHA, "alpha7"), (BRAVO, "bravo7")):
        page = a.get("/campaigns", params={"limit": 100}, headers=key).json()
        assert page["campaigns"] and {c["owner"] for c in page["campaigns"]} == {owner}
    assert b.get(path, headers=ALPHA).status_code == 200
    missing_owner = a.post("/campaigns", json=body(), headers=PLATFORM)
    assert missing_owner.status_code == 422 and missing_owner.json()["detail"][0]["loc"] == ["body", "owner"]
    assert a.get(path).status_code == 401 and a.post("/campaigns", json=body()).status_code == 401


BAD_INPUTS = {
    "naive start": ({"schedule": {"start": "2026-03-01T00:00:00"}}, ["body", "schedule", "start"]),
    "unknown zone": ({"schedule": {"time_zone": "Mars/Olympus"}}, ["body", "schedule", "time_zone"]),
    "end before start": (
        {"schedule": {"start": "2026-03-02T00:00:00Z", "end": "2026-03-01T00:00:00Z"}},
        ["body", "schedule", "end"],
    ),
    "no limit": ({"budget": {}}, ["body", "budget"]),
    "budget zero": ({"budget": {"daily_micro": 0}}, ["body", "budget", "daily_micro"]),
    "bad id": ({"id": "has space"}, ["body", "id"]),
    "bad owner": ({"owner": "-x"}, ["body", "owner"]),
    "name renders to nothing": ({"name": "\u200b\u200b"}, ["body", "name"]),
    "unknown field": ({"colour": "red"}, ["body", "colour"]),
    "name over the limit": ({"name": "N" * 81}, ["body", "name"]),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_is_422_naming_the_field(a: httpx.Client, case: str) -> None:
    """Each bad field is refused 422 and named (create and, for the mutable ones, PATCH)."""
    changes, loc = BAD_INPUTS[case]
    response = a.post("/campaigns", json=body(**{"owner": "alpha7", **changes}), headers=PLATFORM)
    assert response.status_code == 422, response.text
    assert loc in [error["loc"] for error in response.json()["detail"]], response.text
    if loc[1] not in ("id", "owner"):
        create(a, PLATFORM, owner="alpha7", id=f"bad-{abs(hash(case)) % 10**8}")
        patched = a.patch(
            f"/campaigns/bad-{abs(hash(case)) % 10**8}", json=changes, headers={**PLATFORM, "If-Match": '"1"'}
        )
        assert patched.status_code == 422, patched.text
        assert loc in [error["loc"] for error in patched.json()["detail"]], patched.text


def test_open_gateway_manages_everything(gateways: dict[str, GatewayProcess]) -> None:
    """Auth off: no key needed; the owner is still required."""
    with httpx.Client(base_url=gateways["open"].url, timeout=30) as client:
        campaign = create(client, {}, owner="bravo7")
        patched = client.patch(
            f"/campaigns/{campaign['id']}", json={"name": "Open"}, headers={"If-Match": '"1"'}
        )
        assert patched.status_code == 200


def test_a_campaign_survives_a_redis_restart(a: httpx.Client, redis_process: RedisServerProcess) -> None:
    """Durable: after Redis is SIGKILLed and restarted from its AOF, the campaign (and its version) is
    still there."""
    create(a, PLATFORM, owner="alpha7", id="durable-1")
    a.patch("/campaigns/durable-1", json={"name": "Kept"}, headers={**PLATFORM, "If-Match": '"1"'})
    redis_process.kill()
    redis_process.restart()
    deadline = time.monotonic() + 30
    while True:
        response = a.get("/campaigns/durable-1", headers=PLATFORM)
        if response.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "Kept" and response.json()["version"] == 2


def test_index_is_eventually_consistent(redis_process: RedisServerProcess) -> None:
    """The store on a real Redis: an index entry whose campaign was never written (a gateway died
    between its two writes) is skipped by listings at once and removed once older than the grace; a
    refused create (id taken) leaves no entry in the other owner's index; get_many keeps the order and
    answers None for a missing id."""
    from app.campaigns.store import DANGLING_GRACE_MS, INDEX_KEY, CampaignExistsError, CampaignStore
    from app.contract.campaign import CampaignCreate
    from app.ledger.redis_store import make_client
    from app.settings import Settings

    async def scenario() -> None:
        settings = Settings()
        redis = make_client(redis_process.url, settings)
        store = CampaignStore(redis, settings)
        now = time.time_ns() // 1_000_000
        first = await store.create(CampaignCreate.model_validate(body(id="ec-1")), "echo7", now_ms=now)
        await redis.zadd(INDEX_KEY, {"ec-ghost-old": now - DANGLING_GRACE_MS - 1, "ec-ghost-new": now})
        await redis.zadd("mosaic:campaign:owner:{echo7}", {"ec-ghost-old": now - DANGLING_GRACE_MS - 1})
        second = await store.create(CampaignCreate.model_validate(body(id="ec-2")), "echo7", now_ms=now + 1)
        page = await store.list("echo7", None, 10)
        assert [c.id for c in page.campaigns] == ["ec-1", "ec-2"] and page.next_cursor is None
        assert await redis.zscore("mosaic:campaign:owner:{echo7}", "ec-ghost-old") is None
        everything = await store.list(None, None, 100)
        assert "ec-ghost-new" not in {c.id for c in everything.campaigns}
        assert await redis.zscore(INDEX_KEY, "ec-ghost-old") is None  # past the grace: removed
        assert await redis.zscore(INDEX_KEY, "ec-ghost-new") is not None  # a create may be under way
        with pytest.raises(CampaignExistsError):
            await store.create(CampaignCreate.model_validate(body(id="ec-1")), "foxtrot7")
        assert await redis.zcard("mosaic:campaign:owner:{foxtrot7}") == 0
        assert await store.get_many(["ec-2", "nope", "ec-1"]) == [second, None, first]
        await redis.aclose()

    asyncio.run(scenario())
