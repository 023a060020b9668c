"""An auction's outcome through a real gateway process, a real worker process (tiny-random, default
dtype: continuous batching on a bf16 CPU) and real Redis: bit-identical alone and among 16 concurrent
auctions (other queries, advertisers, seeds, sizes).

Invariant: candidates (texts, log π_ref, log q, rewards, allocation), the chosen reply, payments,
expected rewards and utilities, revenue and ESS do not depend on what else the worker serves.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures_gateway import start_gateway_process
from tests.fixtures_redis import RedisServerProcess
from tests.fixtures_worker import WorkerProcess, start_worker_process

KEY = "batching-test-key-0123456789abcdef"
INSTANCES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "instances.jsonl"


@pytest.fixture(scope="module")
def worker() -> Iterator[WorkerProcess]:
    process = start_worker_process("tiny-random", env={"WORKER_TORCH_THREADS": "2"})
    try:
        yield process
    finally:
        process.stop()


def _instances() -> list[dict[str, Any]]:
    lines = INSTANCES.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _outcome(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    body = response.json()
    kept = {k: body[k] for k in ("reply", "chosen_index", "tau", "advertisers", "revenue", "candidates")}
    kept["effective_sample_size"] = body["effective_sample_size"]
    return json.dumps(kept, sort_keys=True)  # floats as repr: equal text ⇔ equal bits


def test_an_auction_is_bit_identical_alone_and_among_16_others(
    worker: WorkerProcess, redis_process: RedisServerProcess, tmp_path: Path
) -> None:
    instances = _instances()
    gateway = start_gateway_process(
        worker.url,
        redis_process.url,
        tmp_path,
        API_KEYS=KEY,
        MAX_CONCURRENT_AUCTIONS="32",
        MAX_AUCTIONS_PER_KEY="32",
        MAX_CANDIDATES="16",
        MAX_TOKENS_LIMIT="64",
    )

    def body(k: int) -> dict[str, Any]:
        instance = instances[k % len(instances)]
        return {
            "query": instance["query"],
            "advertisers": instance["advertisers"][: 1 + k % 2],
            "candidates": 4 + k % 5,
            "max_tokens": 12 + 3 * (k % 4),
            "seed": 1000 + k,
            "include_candidates": True,
        }

    def post(k: int, out: dict[int, httpx.Response]) -> None:
        with httpx.Client(timeout=300) as client:
            out[k] = client.post(
                f"{gateway.url}/auction", json=body(k), headers={"Authorization": f"Bearer {KEY}"}
            )

    try:
        alone: dict[int, httpx.Response] = {}
        post(0, alone)
        together: dict[int, httpx.Response] = {}
        threads = [threading.Thread(target=post, args=(k, together)) for k in range(17)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert len(together) == 17
        assert _outcome(together[0]) == _outcome(alone[0])
        assert all(together[k].status_code == 200 for k in together), [r.text for r in together.values()]
    finally:
        gateway.stop()
