"""The worker's bound on queued tokens, on a real worker process.

Invariant: a worker never holds more than WORKER_MAX_QUEUED_TOKENS of accepted work (unless one request
alone is larger); past it a request is answered 429 with Retry-After at once, before any model work
(its token counters do not move), and is accepted again once the queue has drained.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.fixtures_worker import WorkerProcess, start_worker_process
from workers.queue_limit import QueueFullError, TokenQueue, request_cost


def test_token_queue_accepts_alone_and_refuses_past_the_limit() -> None:
    queue = TokenQueue(100)
    with queue.hold(500):  # alone: always taken, whatever its size
        with pytest.raises(QueueFullError) as refused, queue.hold(1):
            pass
        assert refused.value.retry_after_s >= 1
    with queue.hold(60), queue.hold(40):
        assert queue.tokens == 100
        with pytest.raises(QueueFullError), queue.hold(1):
            pass
    assert (queue.tokens, queue.requests) == (0, 0)
    assert request_cost([10, 20], n=4, max_tokens=8) == 30 + 2 * 4 * 8


@pytest.fixture(scope="module")
def small_queue_worker() -> Iterator[WorkerProcess]:
    worker = start_worker_process("tiny-random", env={"WORKER_MAX_QUEUED_TOKENS": "2000"})
    try:
        yield worker
    finally:
        worker.stop()


def _generated_tokens(client: httpx.Client) -> float:
    text = client.get("/metrics").text
    line = next(x for x in text.splitlines() if x.startswith("vllm:generation_tokens_total"))
    return float(line.split()[-1])


def test_worker_answers_429_past_its_queued_tokens(small_queue_worker: WorkerProcess) -> None:
    long_body = {"prompt": [1, 2, 3, 4], "n": 8, "max_tokens": 200, "ignore_eos": True, "seed": 1}
    small_body = {"prompt": [1, 2, 3, 4], "n": 1, "max_tokens": 8, "seed": 2}
    statuses: list[int] = []
    with httpx.Client(base_url=small_queue_worker.url, timeout=120) as client:
        client.post("/v1/completions", json=small_body).raise_for_status()  # warm
        thread = threading.Thread(
            target=lambda: statuses.append(client.post("/v1/completions", json=long_body).status_code)
        )
        thread.start()
        deadline = time.monotonic() + 30
        while not any(
            line.startswith("vllm:num_requests_running") and not line.endswith(" 0.0")
            for line in client.get("/metrics").text.splitlines()
        ):
            assert time.monotonic() < deadline, "the long request never started"
            time.sleep(0.01)
        before = _generated_tokens(client)
        refused = client.post("/v1/completions", json={**long_body, "n": 2})  # 1604 + 404 > 2000
        after = _generated_tokens(client)
        thread.join(timeout=120)
        assert statuses == [200]
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) >= 1
        error = refused.json()["error"]
        assert error["code"] == 429 and "WORKER_MAX_QUEUED_TOKENS" in error["message"]
        assert after == before or after - before == 8 * 200  # refused at once: none of its tokens
        assert client.post("/v1/completions", json={**long_body, "n": 2}).status_code == 200  # drained
