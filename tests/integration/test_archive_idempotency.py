"""Idempotency-Key outcomes by reference (issue 36): the key names the record, not a copy of the answer.

Invariants (real worker, Redis, PostgreSQL; the gateway's embedded archiver):
- with ARCHIVE_DSN a keyed auction's key holds a reference (auction id, candidate table or not, the
  answer's digest: ~200 B), never the answer's body; without ARCHIVE_DSN it holds the copy, as before;
- a replay answers the first answer's very bytes and status, before the record is archived and after it
  was archived and dropped from Redis (rebuilt from PostgreSQL), billing nothing more;
- a record that no longer rebuilds the answer (changed) or is gone is never replayed as other bytes:
  500 naming the cause.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient

from app.archive.schema import migrate
from app.ledger.idempotency import IDEMPOTENCY_PREFIX
from tests.fixtures_redis import RedisServerProcess
from tests.fixtures_worker import WorkerProcess
from tests.integration.test_archive_gateway import PLATFORM, make_gateway
from tests.integration.test_gateway import auction_body, stream_length

pytestmark = pytest.mark.timeout(240)


def keyed(key: str) -> dict[str, str]:
    return {**PLATFORM, "Idempotency-Key": key}


def migrated(dsn: str) -> None:
    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await migrate(conn)

    asyncio.run(run())


def key_values(store: redis.Redis) -> list[dict[str, object]]:
    return [json.loads(store.get(key)) for key in store.scan_iter(match=f"{IDEMPOTENCY_PREFIX}*")]


def wait_archived(store: redis.Redis, auction_ids: list[str]) -> None:
    deadline = time.monotonic() + 30
    while any(store.exists(f"mosaic:auction:{a}") for a in auction_ids):
        assert time.monotonic() < deadline, "the embedded archiver did not archive the records"
        time.sleep(0.1)


def test_keyed_answers_are_kept_by_reference_and_replayed_after_archiving(
    tiny_worker: WorkerProcess, redis_server: RedisServerProcess, archive_dsn: str, tmp_path: Path
) -> None:
    """The key holds a reference, and the replay after archiving is the first answer's bytes."""
    migrated(archive_dsn)
    store = redis.Redis.from_url(redis_server.url)
    bodies = {
        "plain": auction_body(seed=7, include_candidates=False),
        "table": auction_body(seed=8, include_candidates=True),
    }
    with make_gateway(tiny_worker, redis_server, tmp_path, archive_dsn) as client:
        first = {name: client.post("/auction", json=b, headers=keyed(name)) for name, b in bodies.items()}
        assert all(r.status_code == 200 for r in first.values()), {n: r.text for n, r in first.items()}
        assert "candidates" in first["table"].json() and "candidates" not in first["plain"].json()
        ids = [r.json()["auction_id"] for r in first.values()]
        values = [v for v in key_values(store) if v.get("auction_id") in ids]
        assert len(values) == 2 and all("body" not in v and "ref" in v for v in values), values
        assert all(len(json.dumps(v, separators=(",", ":"))) < 256 for v in values)
        billed = stream_length(redis_server.url)
        assert all(store.exists(f"mosaic:auction:{a}") for a in ids), "archived too early for this test"
        for name, b in bodies.items():  # from Redis
            again = client.post("/auction", json=b, headers=keyed(name))
            assert (again.status_code, again.content) == (200, first[name].content)
            assert again.headers["idempotent-replayed"] == "true"
        wait_archived(store, ids)
        for name, b in bodies.items():  # from PostgreSQL: the record is no longer in Redis
            again = client.post("/auction", json=b, headers=keyed(name))
            assert (again.status_code, again.content) == (200, first[name].content), again.text
            assert again.headers["idempotent-replayed"] == "true"
        assert stream_length(redis_server.url) == billed  # replays bill nothing
        _changed_or_gone_is_500(client, archive_dsn, ids[0], bodies["plain"])
    with make_gateway(tiny_worker, redis_server, tmp_path, "") as plain:
        served = plain.post("/auction", json=auction_body(seed=9), headers=keyed("copy"))
        assert served.status_code == 200
        copied = [v for v in key_values(store) if v.get("auction_id") == served.json()["auction_id"]]
        assert copied and copied[0]["body"] == served.text and "ref" not in copied[0]


def _changed_or_gone_is_500(client: TestClient, dsn: str, auction_id: str, body: dict[str, object]) -> None:
    """A changed archived record fails the digest check; a deleted one is gone: 500 naming it either way."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE auction_records SET record = replace(record, '\"seed\":7', '\"seed\":70') "
            "WHERE auction_id = %s",
            (auction_id,),
        )
        changed = client.post("/auction", json=body, headers=keyed("plain"))
        assert changed.status_code == 500 and "no longer rebuilds" in changed.json()["detail"], changed.text
        conn.execute("DELETE FROM auction_records WHERE auction_id = %s", (auction_id,))
        gone = client.post("/auction", json=body, headers=keyed("plain"))
        assert gone.status_code == 500 and "is gone" in gone.json()["detail"], gone.text
