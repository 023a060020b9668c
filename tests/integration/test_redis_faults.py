"""Redis faults behind a real gateway: the embedded Redis SIGKILLed, one that cannot come back, a full one.

Real processes only: a tiny-random worker, `mosaic serve` with its embedded Redis (redis-server
child, AOF) or with an external redis-server started with a small ``maxmemory`` (noeviction).
* SIGKILL of the embedded Redis: the supervisor restarts it from its AOF, auctions are served again
  within 5 s, /healthz stays 200;
* an embedded Redis whose AOF is unreadable cannot be restarted: /healthz turns 503 (liveness restarts
  the process) after REDIS_RESTART_GIVE_UP_S;
* Redis at maxmemory: /readyz 503 naming it, POST /auction 503 at once with no model work; served again
  once memory is freed.
Every 200 is billed exactly once, nothing else, reconcile clean.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from app.ledger.redis_store import RedisServer
from tests.fixtures_billing import assert_billed_exactly_once, billed_count
from tests.fixtures_gateway import start_gateway_process
from tests.fixtures_worker import WorkerProcess

pytestmark = pytest.mark.timeout(180)

BODY: dict[str, Any] = {
    "query": "Best skin care routine for dry skin.",
    "advertisers": [{"id": "hydraskin", "name": "HydraSkin", "description": "moisturizers for dry skin"}],
    "candidates": 2,
    "max_tokens": 4,
}


def _embedded_url(data_dir: Path) -> str:
    return (data_dir / "redis.url").read_text().strip()


def _model_tokens(worker_url: str) -> float:
    """Tokens the worker has processed (vLLM's counters): any model work at all moves it."""
    text = httpx.get(worker_url + "/metrics", timeout=10).text
    pattern = r"^vllm:(?:prompt|generation)_tokens_total\{[^}]*\} (\S+)$"
    return sum(float(value) for value in re.findall(pattern, text, re.M))


def _kill_and_wait_dead(pid: int, timeout_s: float = 5.0) -> float:
    """SIGKILL ``pid`` and return once it is dead (gone or a zombie), when it can no longer answer.

    A process blocked in the kernel (Redis in an AOF fsync on a slow disk) dies only when the call
    returns, so without this wait an auction could still reach the old Redis after the kill.
    """
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            break
        if state in ("Z", "X"):
            break
        time.sleep(0.005)
    else:
        raise AssertionError(f"Redis pid {pid} still alive {timeout_s}s after SIGKILL")
    return time.monotonic()


def _metric(text: str, name: str, labels: str = "") -> float:
    match = re.search(r"^" + re.escape(name + labels) + r" ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_killed_embedded_redis_is_restarted_and_auctions_resume_within_5s_else_liveness_fails(
    tiny_worker: WorkerProcess, tmp_path: Path
) -> None:
    gateway = start_gateway_process(
        tiny_worker.url, "", tmp_path, REDIS_PROBE_INTERVAL_S="0.2", REDIS_RESTART_GIVE_UP_S="2"
    )
    try:
        url = _embedded_url(tmp_path)
        billed_before = billed_count(url)
        served: list[str] = []
        with httpx.Client(base_url=gateway.url, timeout=60) as client:
            served.append(client.post("/auction", json=BODY).raise_for_status().json()["auction_id"])
            pid = int(redis.Redis.from_url(url).info("server")["process_id"])
            killed = _kill_and_wait_dead(pid)
            statuses = []
            while True:
                response = client.post("/auction", json=BODY)
                statuses.append(response.status_code)
                assert client.get("/healthz").status_code == 200
                if response.status_code == 200:
                    served.append(response.json()["auction_id"])
                    break
                assert response.status_code == 503, response.text  # a clear 5xx naming the cause
                assert "Redis" in response.json()["detail"] or "billing" in response.json()["detail"]
                assert time.monotonic() - killed < 5, statuses
                time.sleep(0.1)
            assert time.monotonic() - killed < 5 + 2  # the restart, then one auction
            old_pid, pid = pid, int(redis.Redis.from_url(url).info("server")["process_id"])
            assert pid != old_pid  # served by the restarted Redis, not the killed one
            assert _metric(client.get("/metrics").text, "mosaic_redis_restarts_total") == 1
            served.append(client.post("/auction", json=BODY).raise_for_status().json()["auction_id"])
            assert_billed_exactly_once(url, served, billed_before)

            # Now one that cannot come back: an unreadable AOF (as after a disk fault) makes
            # redis-server refuse to start; after REDIS_RESTART_GIVE_UP_S liveness fails.
            for path in tmp_path.rglob("*.aof*"):
                if path.is_file():
                    path.write_bytes(b"this is not an append only file\r\n")
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            while client.get("/healthz").status_code == 200:
                assert time.monotonic() - killed < 10
                time.sleep(0.2)
            answer = client.get("/healthz")
            assert answer.status_code == 503 and "could not be restarted" in answer.json()["cause"]
            assert time.monotonic() - killed >= 2
            assert client.get("/readyz").status_code == 503
            assert client.post("/auction", json=BODY).status_code == 503
    finally:
        gateway.stop()


def test_full_redis_answers_503_before_any_model_work(tiny_worker: WorkerProcess, tmp_path: Path) -> None:
    server = RedisServer(
        tmp_path / "redis", extra_args=["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]
    )
    server.start()
    gateway = start_gateway_process(
        tiny_worker.url, server.url, tmp_path / "gw", REDIS_PROBE_INTERVAL_S="0.2"
    )
    client_redis = redis.Redis.from_url(server.url)
    try:
        billed_before = billed_count(server.url)
        served: list[str] = []
        with httpx.Client(base_url=gateway.url, timeout=60) as client:
            served.append(client.post("/auction", json=BODY).raise_for_status().json()["auction_id"])
            junk = 0
            with pytest.raises(redis.ResponseError, match="maxmemory"):
                while junk < 1000:
                    client_redis.set(f"junk:{junk}", b"x" * 65536)
                    junk += 1
            started = time.monotonic()
            while client.get("/readyz").status_code == 200:
                assert time.monotonic() - started < 5
                time.sleep(0.1)
            ready = client.get("/readyz").json()
            assert ready["ready"] is False and "full" in ready["redis_cause"]
            tokens = _model_tokens(tiny_worker.url)
            assert tokens > 0
            for _ in range(5):
                started = time.monotonic()
                response = client.post("/auction", json=BODY)
                assert time.monotonic() - started < 0.5  # the goal is <= 50 ms (bench/faults.py)
                assert response.status_code == 503
                detail = response.json()["detail"]
                assert "full" in detail and "maxmemory" in detail, detail
            assert _model_tokens(tiny_worker.url) == tokens  # no model work for a refused auction
            client_redis.delete(*[f"junk:{i}" for i in range(junk)])
            started = time.monotonic()
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() - started < 5
                time.sleep(0.1)
            served.append(client.post("/auction", json=BODY).raise_for_status().json()["auction_id"])
        assert_billed_exactly_once(server.url, served, billed_before)
    finally:
        gateway.stop()
        server.kill()
