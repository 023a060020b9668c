"""Bill exactly what was served: Idempotency-Key, test auctions, tmax_ms, abandoned requests.

A real worker process (tiny-random) and a real Redis server; the app runs in process (TestClient)
except where the client must really disconnect (a real `mosaic serve` process and a raw socket).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from fastapi.testclient import TestClient

from app.gateway.app import create_app
from app.ledger.events import make_billing_event
from app.ledger.idempotency import IdempotencyLostError, IdempotencyStore, fingerprint, redis_key
from app.ledger.producer import BillingProducer
from app.ledger.reconcile import reconcile
from app.settings import Settings
from tests.fixtures_gateway import GatewayProcess, start_gateway_process
from tests.fixtures_redis import RedisServerProcess
from tests.fixtures_worker import WorkerProcess, generation_tokens, worker_stopped
from tests.integration.test_gateway import auction_body, make_settings, stream_length

KEY_A, KEY_B = "idem-test-platform-key-a", "idem-test-platform-key-b"
AUTH_A = {"Authorization": f"Bearer {KEY_A}"}
AUTH_B = {"Authorization": f"Bearer {KEY_B}"}


def body(**overrides: Any) -> dict[str, Any]:
    return auction_body(**{"candidates": 2, "max_tokens": 4, "include_candidates": False, **overrides})


def keyed(key: str, auth: dict[str, str] = AUTH_A) -> dict[str, str]:
    return {**auth, "Idempotency-Key": key}


def metric(client: TestClient, name: str, **labels: str) -> float:
    text = client.get("/metrics", headers=AUTH_A).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def client(
    tiny_worker: WorkerProcess, redis_process: RedisServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    settings = make_settings(
        [tiny_worker.url], redis_process.url, tmp_path_factory.mktemp("idem"), api_keys=[KEY_A, KEY_B]
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_a_retried_key_is_served_and_billed_once(
    client: TestClient,
    redis_process: RedisServerProcess,
    tiny_worker: WorkerProcess,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Invariant: a replay answers the stored bytes, bills nothing and does no model work (its replay
    check runs beside the auction's tokenization, and generation waits for it: here the check is
    held back 0.5 s, far past the tokenization)."""
    store = client.app.state.auctions.idempotency  # type: ignore[attr-defined]
    original = store.lookup

    async def slow_lookup(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.5)
        return await original(*args, **kwargs)

    monkeypatch.setattr(store, "lookup", slow_lookup)
    before = stream_length(redis_process.url)
    first = client.post("/auction", json=body(seed=101), headers=keyed("retry-1"))
    assert first.status_code == 200, first.text
    assert "idempotent-replayed" not in first.headers
    generated = generation_tokens(tiny_worker)
    for _ in range(2):
        again = client.post("/auction", json=body(seed=101), headers=keyed("retry-1"))
        assert again.status_code == 200
        assert again.headers["idempotent-replayed"] == "true"
        assert again.content == first.content  # the very bytes, timings included
    assert generation_tokens(tiny_worker) == generated
    assert stream_length(redis_process.url) == before + 1
    auction_id = first.json()["auction_id"]
    assert client.get(f"/auctions/{auction_id}", headers=AUTH_A).status_code == 200
    # without a key the same body is a new auction (and a new charge)
    other = client.post("/auction", json=body(seed=101), headers=AUTH_A).json()
    assert other["auction_id"] != auction_id
    assert stream_length(redis_process.url) == before + 2


def test_a_failed_replay_check_is_503_with_no_model_work_and_the_key_free(
    client: TestClient,
    redis_process: RedisServerProcess,
    tiny_worker: WorkerProcess,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Invariant: when the replay check itself fails (Redis refused the read) the auction stops
    before generating, nothing is billed or stored, and the key stays free for the retry."""
    store = client.app.state.auctions.idempotency  # type: ignore[attr-defined]
    original = store.lookup

    async def failing_lookup(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.3)  # after the claim and the tokenization
        raise redis.exceptions.ConnectionError("Redis went away")

    before, generated = stream_length(redis_process.url), generation_tokens(tiny_worker)
    monkeypatch.setattr(store, "lookup", failing_lookup)
    failed = client.post("/auction", json=body(seed=112), headers=keyed("check-failed"))
    assert failed.status_code == 503, failed.text
    assert stream_length(redis_process.url) == before and generation_tokens(tiny_worker) == generated
    monkeypatch.setattr(store, "lookup", original)
    retry = client.post("/auction", json=body(seed=112), headers=keyed("check-failed"))
    assert retry.status_code == 200 and "idempotent-replayed" not in retry.headers
    assert stream_length(redis_process.url) == before + 1


def test_keys_are_scoped_per_api_key(client: TestClient, redis_process: RedisServerProcess) -> None:
    first = client.post("/auction", json=body(seed=102), headers=keyed("scoped", AUTH_A)).json()
    second = client.post("/auction", json=body(seed=102), headers=keyed("scoped", AUTH_B))
    assert second.status_code == 200 and "idempotent-replayed" not in second.headers
    assert second.json()["auction_id"] != first["auction_id"]


def test_same_key_other_body_is_422_naming_the_header(
    client: TestClient, redis_process: RedisServerProcess
) -> None:
    assert client.post("/auction", json=body(seed=103), headers=keyed("reused")).status_code == 200
    before = stream_length(redis_process.url)
    response = client.post("/auction", json=body(seed=104), headers=keyed("reused"))
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["header", "Idempotency-Key"]
    assert "different parameters" in error["msg"]
    assert stream_length(redis_process.url) == before


@pytest.mark.parametrize("bad", ["", " ", "a b", "é", "x" * 256, "tab\there"])
def test_malformed_keys_are_422_naming_the_header(client: TestClient, bad: str) -> None:
    response = client.post(
        "/auction",
        json=body(),
        headers={**AUTH_A, "Idempotency-Key": bad.encode("utf-8")},  # type: ignore[dict-item]
    )
    assert response.status_code == 422, response.text
    assert any("Idempotency-Key" in e["loc"] for e in response.json()["detail"])


def test_a_key_of_255_visible_characters_is_accepted(client: TestClient) -> None:
    key = "".join(chr(33 + i % 94) for i in range(255))
    assert client.post("/auction", json=body(seed=105), headers=keyed(key)).status_code == 200
    assert client.post("/auction", json=body(seed=105), headers=keyed(key)).headers["idempotent-replayed"]


def test_a_refused_request_is_not_stored(client: TestClient) -> None:
    refused = client.post("/auction", json=body(candidates=99), headers=keyed("refused-first"))
    assert refused.status_code == 422
    served = client.post("/auction", json=body(seed=106), headers=keyed("refused-first"))
    assert served.status_code == 200 and "idempotent-replayed" not in served.headers


def test_a_5xx_after_model_work_is_stored_and_replayed(
    slow_gateway: GatewayProcess, tiny_worker: WorkerProcess, redis_process: RedisServerProcess
) -> None:
    """Invariant: a 5xx that happens after the key's claim (here the request's own deadline, its worker
    SIGSTOPped so the auction cannot end first) is stored under the key and replayed byte for byte,
    and nothing is billed. The worker is held rather than the deadline made tiny: with `tmax_ms=1` a
    loaded machine could pass the deadline before the claim was written (a 5xx before the claim is
    not stored, so the retry ran again), which the full suite saw on a busy 2-core machine."""
    before = stream_length(redis_process.url)
    slow = {**slow_body(110), "tmax_ms": 1500}
    with worker_stopped(tiny_worker):
        first = post_keyed(slow_gateway, slow, "timed-out")
    assert first.status_code == 504, first.text
    assert "tmax_ms=1500" in first.json()["detail"]
    again = post_keyed(slow_gateway, slow, "timed-out")
    assert again.status_code == 504 and again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert stream_length(redis_process.url) == before


def test_keys_are_kept_idempotency_ttl_s(client: TestClient, redis_process: RedisServerProcess) -> None:
    assert client.post("/auction", json=body(seed=107), headers=keyed("ttl")).status_code == 200
    ttl = redis.Redis.from_url(redis_process.url).ttl(redis_key(_key_id(KEY_A), "ttl"))
    assert 86_400 - 60 < ttl <= 86_400


def _key_id(token: str) -> str:
    import hashlib

    return hashlib.sha256(token.encode()).digest()[:16].hex()


@pytest.fixture(scope="module")
def slow_gateway(
    tiny_worker: WorkerProcess, redis_process: RedisServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A real `mosaic serve` process whose health probe leaves a SIGSTOPped worker in (a stopped
    worker holds an auction running for as long as a test needs, on any machine)."""
    gateway = start_gateway_process(
        tiny_worker.url,
        redis_process.url,
        tmp_path_factory.mktemp("slow-gw"),
        MAX_CANDIDATES="16",
        MAX_TOKENS_LIMIT="64",
        WORKER_PROBE_INTERVAL_S="60",
        WORKER_HEDGE="false",
    )
    yield gateway
    gateway.stop()


def slow_body(seed: int) -> dict[str, Any]:
    return auction_body(candidates=16, max_tokens=64, seed=seed, include_candidates=False)


def post_keyed(gateway: GatewayProcess, payload: dict[str, Any], key: str) -> httpx.Response:
    return httpx.post(f"{gateway.url}/auction", json=payload, headers={"Idempotency-Key": key}, timeout=60)


def test_a_key_still_running_is_409(slow_gateway: GatewayProcess, tiny_worker: WorkerProcess) -> None:
    """Invariant: while a key's first request runs (held by a SIGSTOPped worker), a second with the
    same key is 409 at once and starts nothing; once the first ends, the key replays its outcome."""
    results: list[httpx.Response] = []
    first = threading.Thread(target=lambda: results.append(post_keyed(slow_gateway, slow_body(108), "busy")))
    with worker_stopped(tiny_worker):
        first.start()
        time.sleep(0.3)  # the claim is one Redis write; the auction cannot end while the worker is stopped
        second = post_keyed(slow_gateway, slow_body(108), "busy")
        assert not results, "the first request ended while its worker was stopped"
    first.join(timeout=60)
    assert results and results[0].status_code == 200, results
    assert second.status_code == 409, second.text
    assert "still running" in second.json()["detail"]
    third = post_keyed(slow_gateway, slow_body(108), "busy")
    assert third.headers["idempotent-replayed"] == "true"
    assert third.json()["auction_id"] == results[0].json()["auction_id"]


def test_two_writers_of_one_key_never_both_write(redis_process: RedisServerProcess, tmp_path: Path) -> None:
    """A request whose lease lapsed and was claimed again writes nothing: neither the keyed bill (one
    script, idempotency_bill.lua) nor a keyed pending charge (MULTI under WATCH of the key)."""
    settings = Settings(redis_url=redis_process.url, data_dir=tmp_path, billing_stream="mosaic:watch-test")

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_process.url)
        store, producer = IdempotencyStore(client, settings), BillingProducer(client, settings)
        fp = fingerprint({"q": 1})
        first = await store.claim("k", "lapsed", fp, deadline_s=1)
        assert not isinstance(first, type(None))
        await client.delete(first.key)  # its lease lapsed ...
        second = await store.claim("k", "lapsed", fp, deadline_s=1)  # ... and another gateway took it
        event = make_billing_event("watch-a", {"adv": 1.0}, "USD")
        for mode in ("bill", "pending"):  # the lapsed writer loses in both billing modes
            with pytest.raises(IdempotencyLostError):
                await producer.record(
                    event,
                    ("mosaic:auction:watch-a", "{}", 60),
                    mode,  # type: ignore[arg-type]
                    store.write_for(first, 200, "{}", "watch-a"),
                )  # type: ignore[arg-type]
        assert await client.xlen(settings.billing_stream) == 0
        assert await client.get("mosaic:auction:watch-a") is None
        assert json.loads(await client.get(second.key))["state"] == "running"  # type: ignore[union-attr]
        await producer.record(
            event, ("mosaic:auction:watch-a", "{}", 60), "bill", store.write_for(second, 200, "{}", "watch-a")
        )  # type: ignore[arg-type]
        assert await client.xlen(settings.billing_stream) == 1
        assert json.loads(await client.get(first.key))["state"] == "done"  # type: ignore[union-attr]
        await client.aclose()

    asyncio.run(scenario())


def test_a_test_auction_is_run_flagged_and_never_billed(
    client: TestClient, redis_process: RedisServerProcess
) -> None:
    before = stream_length(redis_process.url)
    revenue = metric(client, "mosaic_revenue_cumulative")
    response = client.post("/auction", json=body(seed=109, test=True), headers=AUTH_A)
    assert response.status_code == 200, response.text
    served = response.json()
    assert served["test"] is True and served["billing"] == "test" and served["reply"]
    record = client.get(f"/auctions/{served['auction_id']}", headers=AUTH_A).json()
    assert record["test"] is True and record["billing"] == "test"
    assert stream_length(redis_process.url) == before
    assert metric(client, "mosaic_revenue_cumulative") == revenue
    assert metric(client, "mosaic_auctions_total", outcome="test") >= 1


def test_tmax_ms_over_the_deadline_is_422_and_past_it_504(
    client: TestClient, redis_process: RedisServerProcess
) -> None:
    too_long = client.post("/auction", json=body(tmax_ms=300_001), headers=AUTH_A)
    assert too_long.status_code == 422
    assert too_long.json()["detail"][0]["loc"] == ["body", "tmax_ms"]
    before = stream_length(redis_process.url)
    late = client.post("/auction", json=auction_body(candidates=8, max_tokens=64, tmax_ms=1), headers=AUTH_A)
    assert late.status_code == 504 and "tmax_ms" in late.json()["detail"]
    assert stream_length(redis_process.url) == before
    in_time = client.post("/auction", json=body(tmax_ms=60_000), headers=AUTH_A)
    assert in_time.status_code == 200


def _disconnect_after(port: int, payload: dict[str, Any], headers: dict[str, str], after_s: float) -> None:
    """Send the request on a raw socket, then close it before any answer (the client gave up)."""
    raw = json.dumps(payload).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (
        f"POST /auction HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{head}"
        f"Content-Length: {len(raw)}\r\n\r\n"
    ).encode() + raw
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        time.sleep(after_s)


def test_an_abandoned_request_is_cancelled_and_never_billed(
    slow_gateway: GatewayProcess, tiny_worker: WorkerProcess, redis_process: RedisServerProcess
) -> None:
    """Invariant: a client that disconnects before the billing write cancels its auction: counted
    abandoned, nothing billed or stored under its key (a retry runs afresh and is billed once). The
    worker is SIGSTOPped meanwhile, so only the disconnect can end the auction, on any machine."""
    before = stream_length(redis_process.url)
    with worker_stopped(tiny_worker):
        started = time.monotonic()
        _disconnect_after(slow_gateway.port, slow_body(110), {"Idempotency-Key": "abandoned"}, after_s=0.2)
        abandoned = 0.0
        while time.monotonic() - started < 10 and not abandoned:
            time.sleep(0.05)
            for line in httpx.get(f"{slow_gateway.url}/metrics").text.splitlines():
                if line.startswith("mosaic_auctions_total{") and 'outcome="abandoned"' in line:
                    abandoned = float(line.rsplit(" ", 1)[1])
        assert abandoned == 1
    time.sleep(1.0)  # the worker, running again, gets only closed connections: nothing reaches billing
    assert stream_length(redis_process.url) == before
    retry = post_keyed(slow_gateway, slow_body(110), "abandoned")
    assert retry.status_code == 200 and "idempotent-replayed" not in retry.headers
    assert stream_length(redis_process.url) == before + 1


def test_after_the_billing_write_a_disconnect_does_not_undo_the_auction(
    client: TestClient, redis_process: RedisServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ASGI client disconnects while the final write is finishing (after its EXEC, held there
    0.3 s): the auction stands, answered 200, billed once, retrievable by its key."""
    payload = json.dumps(body(seed=111)).encode()
    length = stream_length(redis_process.url)
    sent: list[dict[str, Any]] = []
    billing = client.app.state.auctions.billing  # type: ignore[attr-defined]
    original, written = billing.record, threading.Event()

    async def record_then_linger(*args: Any, **kwargs: Any) -> str:
        result = await original(*args, **kwargs)
        written.set()  # in Redis now; the auction's task is still inside its (shielded) write
        await asyncio.sleep(0.3)
        return str(result)

    monkeypatch.setattr(billing, "record", record_then_linger)

    async def drive() -> None:
        request_sent = False

        async def receive() -> dict[str, Any]:
            nonlocal request_sent
            if not request_sent:
                request_sent = True
                return {"type": "http.request", "body": payload, "more_body": False}
            while not written.is_set():
                await asyncio.sleep(0.001)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        headers = [(b"content-type", b"application/json"), (b"idempotency-key", b"stands")]
        headers.append((b"authorization", f"Bearer {KEY_A}".encode()))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/auction",
            "raw_path": b"/auction",
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "state": {},
        }
        await client.app(scope, receive, send)  # type: ignore[arg-type]

    client.portal.call(drive)  # type: ignore[union-attr]
    assert sent[0]["status"] == 200
    assert stream_length(redis_process.url) == length + 1
    replay = client.post("/auction", json=body(seed=111), headers=keyed("stands"))
    assert replay.headers["idempotent-replayed"] == "true"
    auction_id = replay.json()["auction_id"]
    assert client.get(f"/auctions/{auction_id}", headers=AUTH_A).status_code == 200


def test_reconcile_is_clean_after_all_of_the_above(
    client: TestClient, redis_process: RedisServerProcess
) -> None:
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]

    async def check() -> None:
        redis_client = aioredis.Redis.from_url(redis_process.url)
        deadline = time.monotonic() + 20
        while True:
            report = await reconcile(redis_client, settings)
            if (report.ok and report.in_flight == 0) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        await redis_client.aclose()
        assert report.ok, report.differences
        assert report.test_records >= 1

    asyncio.run(check())
