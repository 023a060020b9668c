"""Read-through: a gateway with ARCHIVE_DSN answers an archived auction exactly as before archiving.

Invariant (real worker, Redis, PostgreSQL; the gateway's embedded archiver): every route that reads a
record - `GET /auctions/{id}` (platform key and an advertiser's sealed view), the what-if
(`POST /auctions/{id}/resolve`), `GET /auctions/{id}/why`, `GET /auctions/{id}/proof` (its leaf, or
"not in the transparency log": past the record check either way) - answers the same status and the
same body once the archiver has moved the record (and its transparency log leaf) to PostgreSQL and Redis no
longer holds it; an
unknown id is 404 before and after; and without ARCHIVE_DSN the same gateway answers 404 for the
archived auction (so the answers above did come from the archive). /metrics counts the record and
its billing event archived, and an empty queue.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import psycopg
import redis
from fastapi.testclient import TestClient

from app.archive.schema import migrate
from app.gateway.app import create_app
from app.settings import Settings
from tests.fixtures_redis import RedisServerProcess
from tests.fixtures_worker import WorkerProcess
from tests.integration.test_gateway import auction_body
from tests.unit.test_transparency_checks import SIGNER

PLATFORM = {"Authorization": "Bearer platform-key-0001"}
STRUM = {"Authorization": "Bearer strum-key-0001"}


def make_gateway(
    worker: WorkerProcess, redis_server: RedisServerProcess, tmp_path: Path, dsn: str, **overrides: Any
) -> TestClient:
    settings = Settings(
        worker_urls=[worker.url],
        redis_url=redis_server.url,
        data_dir=tmp_path,
        log_json=False,
        worker_timeout_s=30,
        billing_block_ms=100,
        api_keys=["platform-key-0001"],
        advertiser_api_keys={"strummaster": ["strum-key-0001"]},
        transparency_head_interval_s=0.1,
        archive_dsn=dsn,
        archive_min_age_s=2.0,
        archive_interval_s=0.05,
        **overrides,
    )
    app = create_app(settings)
    app.state.head_signer = SIGNER
    return TestClient(app)


def reads(client: TestClient, auction_id: str) -> dict[str, Any]:
    """Every record route's (status, body) for this auction (the proof: its status and leaf)."""
    base = f"/auctions/{auction_id}"
    proof = client.get(f"{base}/proof", headers=STRUM)
    return {
        "record": (r := client.get(base, headers=PLATFORM)).status_code and (r.status_code, r.json()),
        "sealed": (r := client.get(base, headers=STRUM)).status_code and (r.status_code, r.json()),
        "whatif": (r := client.post(f"{base}/resolve", json={"tau": 2.0}, headers=PLATFORM)).status_code
        and (r.status_code, r.json()),
        "sealed_whatif": (r := client.post(f"{base}/resolve", json={"tau": 2.0}, headers=STRUM)).status_code
        and (r.status_code, r.json()),
        "why": (r := client.get(f"{base}/why", headers=PLATFORM)).status_code and (r.status_code, r.json()),
        "proof": (proof.status_code, proof.json().get("leaf_index", proof.json().get("detail"))),
        "unknown": client.get("/auctions/0123456789abcdef", headers=PLATFORM).status_code,
    }


def test_archived_record_reads_the_same(
    tiny_worker: WorkerProcess, redis_server: RedisServerProcess, archive_dsn: str, tmp_path: Path
) -> None:
    async def migrated() -> None:
        async with await psycopg.AsyncConnection.connect(archive_dsn, autocommit=True) as conn:
            await migrate(conn)

    asyncio.run(migrated())
    store = redis.Redis.from_url(redis_server.url)
    with make_gateway(tiny_worker, redis_server, tmp_path, archive_dsn) as client:
        served = client.post("/auction", json=auction_body(), headers=PLATFORM)
        assert served.status_code == 200, served.text
        auction_id = served.json()["auction_id"]
        key = f"mosaic:auction:{auction_id}"
        before = reads(client, auction_id)
        assert store.exists(key), "archived before the first reads: raise ARCHIVE_MIN_AGE_S"
        assert before["record"][0] == 200 and before["sealed"][1]["view"] == "sealed"
        assert before["unknown"] == 404
        assert before["proof"][0] == 200 or "transparency log" in before["proof"][1]  # her record was found
        deadline = time.monotonic() + 30
        while store.exists(key) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not store.exists(key), "the embedded archiver did not archive the record"
        assert reads(client, auction_id) == before
        deadline = time.monotonic() + 10  # the gauge is read at the start of the archiver's next pass
        while "mosaic_archive_queue_depth 0.0" not in (
            metrics := client.get("/metrics", headers=PLATFORM).text
        ):
            assert time.monotonic() < deadline, metrics
            time.sleep(0.05)
        # the log's leaf and index entry left Redis too (PostgreSQL serves the proof above)
        assert store.llen("mosaic:tlog:leaves") == 0 and store.hlen("mosaic:tlog:index") == 0
        assert int(store.get("mosaic:tlog:base")) == 1
        assert reads(client, auction_id) == before
        assert 'mosaic_archive_rows_total{kind="records",outcome="archived"} 1.0' in metrics
        assert 'mosaic_archive_rows_total{kind="events",outcome="archived"} 1.0' in metrics  # its bill
    with make_gateway(tiny_worker, redis_server, tmp_path, "") as plain:
        assert plain.get(f"/auctions/{auction_id}", headers=PLATFORM).status_code == 404


def test_render_of_an_archived_auction_bills_it_once(
    tiny_worker: WorkerProcess, redis_server: RedisServerProcess, archive_dsn: str, tmp_path: Path
) -> None:
    """BILLING_MODE=render: an auction whose record was archived before it was shown is billed by its
    render as before (the record read through the archive; the pending charge stays in Redis), once."""

    async def migrated() -> None:
        async with await psycopg.AsyncConnection.connect(archive_dsn, autocommit=True) as conn:
            await migrate(conn)

    asyncio.run(migrated())
    store = redis.Redis.from_url(redis_server.url)
    with make_gateway(tiny_worker, redis_server, tmp_path, archive_dsn, billing_mode="render") as client:
        served = client.post("/auction", json=auction_body(), headers=PLATFORM)
        assert served.status_code == 200 and served.json()["billing"] == "pending", served.text
        auction_id = served.json()["auction_id"]
        deadline = time.monotonic() + 30
        while store.exists(f"mosaic:auction:{auction_id}") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not store.exists(f"mosaic:auction:{auction_id}")
        first = client.post(f"/auctions/{auction_id}/render", headers=PLATFORM)
        assert first.status_code == 200 and first.json()["billed_now"] is True, first.text
        again = client.post(f"/auctions/{auction_id}/render", headers=PLATFORM)
        assert again.status_code == 200 and again.json()["billed_now"] is False
        assert client.get(f"/auctions/{auction_id}", headers=PLATFORM).json()["billing"] == "billed"
