"""Admission limits of a real gateway process (real worker, real Redis).

Invariants: past a limit an auction is refused 429 with `Retry-After` before any model work (the
worker's token counters do not move) and nothing is billed (the billing stream grows only by the
answered auctions); one API key at its own limit does not hold up another key.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.fixtures_gateway import GatewayProcess, start_gateway_process
from tests.fixtures_redis import RedisServerProcess
from tests.fixtures_worker import WorkerProcess, generation_tokens, start_worker_process, worker_stopped

KEY_A, KEY_B = "admission-test-key-a-0123456789", "admission-test-key-b-0123456789"
SLOW = {"query": "Tell me about guitars.", "advertisers": [{"id": "a", "name": "A", "description": "x"}]}


@pytest.fixture(scope="module")
def slow_worker() -> Iterator[WorkerProcess]:
    # Every generation decodes max_tokens exactly, so an auction takes long enough to overlap.
    worker = start_worker_process("tiny-random", env={"WORKER_FORCE_IGNORE_EOS": "true"})
    try:
        yield worker
    finally:
        worker.stop()


def _gateway(
    worker: WorkerProcess, redis_process: RedisServerProcess, tmp: Path, **env: str
) -> GatewayProcess:
    return start_gateway_process(
        worker.url,
        redis_process.url,
        tmp,
        API_KEYS=f"{KEY_A},{KEY_B}",
        MAX_CANDIDATES="64",
        MAX_TOKENS_LIMIT="256",
        **env,
    )


def _post(url: str, key: str, results: list[httpx.Response], **fields: object) -> None:
    body = {**SLOW, "candidates": 16, "max_tokens": 200, "seed": 1, **fields}
    with httpx.Client(timeout=120) as client:
        results.append(client.post(f"{url}/auction", json=body, headers={"Authorization": f"Bearer {key}"}))


def _wait_running(worker: WorkerProcess) -> None:
    deadline = time.monotonic() + 30
    while not any(
        line.startswith("vllm:num_requests_running") and not line.endswith(" 0.0")
        for line in httpx.get(f"{worker.url}/metrics").text.splitlines()
    ):
        assert time.monotonic() < deadline, "the first auction never reached the worker"
        time.sleep(0.01)


def test_over_the_concurrency_limit_is_429_before_model_work(
    slow_worker: WorkerProcess, redis_process: RedisServerProcess, tmp_path: Path
) -> None:
    gateway = _gateway(
        slow_worker, redis_process, tmp_path, MAX_CONCURRENT_AUCTIONS="1", MAX_WAITING_AUCTIONS="0"
    )
    stream = redis.Redis.from_url(redis_process.url)
    try:
        billed_before = stream.xlen("mosaic:billing") if stream.exists("mosaic:billing") else 0
        first: list[httpx.Response] = []
        thread = threading.Thread(target=_post, args=(gateway.url, KEY_A, first))
        thread.start()
        _wait_running(slow_worker)
        tokens_before = generation_tokens(slow_worker)
        refused: list[httpx.Response] = []
        _post(gateway.url, KEY_B, refused, candidates=1, max_tokens=4)
        tokens_after = generation_tokens(slow_worker)
        thread.join(timeout=120)
        assert first[0].status_code == 200, first[0].text
        assert refused[0].status_code == 429, refused[0].text
        assert int(refused[0].headers["retry-after"]) >= 1
        assert "MAX_WAITING_AUCTIONS" in refused[0].json()["detail"]
        # The refused auction did no model work: whatever moved belongs to the first auction.
        assert tokens_after - tokens_before in (0.0, 16 * 200)
        assert stream.xlen("mosaic:billing") == billed_before + 1  # only the served auction billed
        metrics = httpx.get(f"{gateway.url}/metrics", headers={"Authorization": f"Bearer {KEY_A}"}).text
        assert 'mosaic_admission_refused_total{reason="queue_full"} 1.0' in metrics
    finally:
        gateway.stop()


def test_one_key_at_its_limit_does_not_hold_up_another(
    slow_worker: WorkerProcess, redis_process: RedisServerProcess, tmp_path: Path
) -> None:
    gateway = _gateway(slow_worker, redis_process, tmp_path, MAX_AUCTIONS_PER_KEY="1", ADMISSION_WAIT_S="0.5")
    try:
        first: list[httpx.Response] = []
        thread = threading.Thread(target=_post, args=(gateway.url, KEY_A, first))
        thread.start()
        _wait_running(slow_worker)
        same_key: list[httpx.Response] = []
        other_key: list[httpx.Response] = []
        # The worker SIGSTOPped: the first auction holds A's place for as long as this takes, on any machine.
        with worker_stopped(slow_worker):
            _post(gateway.url, KEY_A, same_key, candidates=1, max_tokens=4)  # waits 0.5 s, then 429
        other = threading.Thread(target=_post, args=(gateway.url, KEY_B, other_key), kwargs={"candidates": 1})
        other.start()
        other.join(timeout=120)
        thread.join(timeout=120)
        assert same_key[0].status_code == 429 and "ADMISSION_WAIT_S" in same_key[0].json()["detail"]
        assert other_key[0].status_code == 200, other_key[0].text  # admitted although A was at its limit
        assert first[0].status_code == 200
    finally:
        gateway.stop()


def test_workers_at_their_queue_limit_answer_429_and_bill_nothing(
    redis_process: RedisServerProcess, tmp_path: Path
) -> None:
    """The worker's own bound (WORKER_MAX_QUEUED_TOKENS) surfaces as the gateway's 429, not a 5xx."""
    worker = start_worker_process(
        "tiny-random", env={"WORKER_FORCE_IGNORE_EOS": "true", "WORKER_MAX_QUEUED_TOKENS": "8000"}
    )
    gateway = _gateway(worker, redis_process, tmp_path)
    stream = redis.Redis.from_url(redis_process.url)
    try:
        billed_before = stream.xlen("mosaic:billing") if stream.exists("mosaic:billing") else 0
        first: list[httpx.Response] = []
        thread = threading.Thread(target=_post, args=(gateway.url, KEY_A, first))
        thread.start()
        _wait_running(worker)
        refused: list[httpx.Response] = []
        # The first auction holds 3.2k-7.3k tokens (its generation, then its two scorings); this one's
        # generation alone costs 32 × 200 more: past the worker's 8000 whatever the first is doing.
        _post(gateway.url, KEY_B, refused, candidates=32)
        thread.join(timeout=120)
        assert first[0].status_code == 200, first[0].text
        assert refused[0].status_code == 429, refused[0].text
        assert int(refused[0].headers["retry-after"]) >= 1
        assert "queue limits" in refused[0].json()["detail"]
        assert stream.xlen("mosaic:billing") == billed_before + 1
    finally:
        gateway.stop()
        worker.stop()
