"""The transparency routes on a running gateway app (its lifespan: real Redis, the sequencer task).

Invariants: `GET /transparency/head` serves the latest signed head; `GET /auctions/{id}/proof`
serves an inclusion proof that `check_inclusion` accepts, to a platform key and to an advertiser who
took part (another advertiser, an unknown or malformed id: 404; no key: 401), waiting for the next
head when the auction is newer than the latest; an auction not covered in time answers 409 with
Retry-After (no sequencer here: nobody signs); `GET /transparency/consistency` serves a proof
`check_consistency` accepts, 422 naming `first` when the sizes are out of order, 409 past the
latest head.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from app.gateway.app import create_app
from app.settings import Settings
from app.verification.log_checks import check_consistency, check_inclusion
from tests.fixtures_redis import RedisServerProcess
from tests.integration.test_transparency_log import append_many, statement
from tests.unit.test_transparency_checks import KEYS, SIGNER

PLATFORM = {"Authorization": "Bearer platform-key-0001"}
ALICE = {"Authorization": "Bearer alice-key-0001"}
CAROL = {"Authorization": "Bearer carol-key-0001"}


def gateway(redis: RedisServerProcess, tmp_path: Path, **overrides: Any) -> TestClient:
    settings = Settings(
        redis_url=redis.url,
        data_dir=tmp_path,
        log_json=False,
        worker_urls=["http://127.0.0.1:9"],  # no worker: these routes need none
        api_keys=["platform-key-0001"],
        advertiser_api_keys={"alice": ["alice-key-0001"], "carol": ["carol-key-0001"]},
        billing_embedded_consumer=False,
        transparency_head_interval_s=0.1,
        **overrides,
    )
    app = create_app(settings)
    app.state.head_signer = SIGNER
    return TestClient(app)


@pytest.fixture
def client(redis_server: RedisServerProcess, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(redis_url=redis_server.url, data_dir=tmp_path)
    asyncio.run(append_many(redis_server, settings, [f"p{i}" for i in range(37)]))
    with gateway(redis_server, tmp_path) as test_client:
        yield test_client


def wait_for_head(client: TestClient, size: int) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        response = client.get("/transparency/head", headers=PLATFORM)
        if response.status_code == 200 and response.json()["tree_size"] >= size:
            return dict(response.json())
        time.sleep(0.05)
    raise AssertionError(f"no head of size {size}: {response.status_code} {response.text}")


def test_head_and_proofs_verify(client: TestClient, redis_server: RedisServerProcess, tmp_path: Path) -> None:
    head = wait_for_head(client, 37)
    assert head["tree_size"] == 37 and head["kid"] == SIGNER.kid
    for auction_id, headers in (("p0", PLATFORM), ("p20", ALICE), ("p36", PLATFORM)):
        response = client.get(f"/auctions/{auction_id}/proof", headers=headers)
        assert response.status_code == 200, response.text
        proof = response.json()
        assert proof["head"] == head and proof["auction_id"] == auction_id
        assert all(c.ok for c in check_inclusion(statement(auction_id), proof, KEYS))
        assert not check_inclusion(statement("p1"), proof, KEYS)[1].ok  # another auction's statement
    asyncio.run(
        append_many(redis_server, Settings(redis_url=redis_server.url, data_dir=tmp_path), ["q1", "q2"])
    )
    waited = client.get("/auctions/q2/proof", headers=PLATFORM)  # not covered yet: the route waits for a head
    assert waited.status_code == 200 and all(
        c.ok for c in check_inclusion(statement("q2"), waited.json(), KEYS)
    )
    new_head = wait_for_head(client, 39)
    proof = client.get("/transparency/consistency?first=37&second=39", headers=ALICE).json()
    assert all(c.ok for c in check_consistency(head, new_head, proof, KEYS))


def test_who_may_read_a_proof(client: TestClient) -> None:
    wait_for_head(client, 37)
    assert client.get("/auctions/p3/proof").status_code == 401
    assert client.get("/transparency/head").status_code == 401
    assert client.get("/auctions/p3/proof", headers=CAROL).status_code == 404  # not her auction
    assert client.get("/auctions/nope/proof", headers=PLATFORM).status_code == 404
    assert client.get("/auctions/bad-id!/proof", headers=PLATFORM).status_code == 404
    for query, status, field in (("first=5&second=4", 422, "first"), ("first=1&second=38", 409, "second")):
        response = client.get(f"/transparency/consistency?{query}", headers=PLATFORM)
        assert response.status_code == status and field in response.text, response.text
    (error,) = client.get("/transparency/consistency?first=5&second=4", headers=PLATFORM).json()["detail"]
    assert error["loc"] == ["query", "first"]  # a FieldError naming the field, as every 422


def test_an_auction_not_yet_covered_answers_409_with_retry_after(
    redis_server: RedisServerProcess, tmp_path: Path
) -> None:
    settings = Settings(redis_url=redis_server.url, data_dir=tmp_path)
    asyncio.run(append_many(redis_server, settings, ["u1"]))
    with gateway(
        redis_server, tmp_path, transparency_sequencer=False, transparency_proof_wait_s=0.3
    ) as client:
        assert client.get("/transparency/head", headers=PLATFORM).status_code == 404  # none signed
        response = client.get("/auctions/u1/proof", headers=PLATFORM)
        assert response.status_code == 409, response.text
        assert response.headers["retry-after"] == "1" and "not yet covered" in response.json()["detail"]


def test_a_rewrite_is_counted_and_halts_the_proofs(
    client: TestClient, redis_server: RedisServerProcess
) -> None:
    """A leaf overwritten under a running gateway: the sequencer counts it (mosaic_tlog_tampered_total),
    signs no further head, and the proof routes answer 503 naming the cause."""
    head = wait_for_head(client, 37)
    metrics = client.get("/metrics", headers=PLATFORM).text
    assert "mosaic_tlog_tree_size 37.0" in metrics
    assert 'mosaic_tlog_tampered_total{kind="rewritten"}' not in metrics
    with redis.Redis.from_url(redis_server.url) as sync_client:
        sync_client.lset("mosaic:tlog:leaves", 4, "ff" * 32)
    deadline = time.monotonic() + 10
    while (
        'mosaic_tlog_tampered_total{kind="rewritten"} 1.0'
        not in client.get("/metrics", headers=PLATFORM).text
    ):
        assert time.monotonic() < deadline, "the rewrite was not counted"
        time.sleep(0.05)
    response = client.get("/auctions/p9/proof", headers=PLATFORM)
    assert response.status_code == 503 and "halted (rewritten)" in response.json()["detail"]
    settings = Settings(redis_url=redis_server.url, data_dir=redis_server.data_dir)
    asyncio.run(append_many(redis_server, settings, ["z1"]))
    time.sleep(0.5)  # five sequencer periods
    assert client.get("/transparency/head", headers=PLATFORM).json() == head  # nothing signed over it
