"""Admission limits of a real gateway process (real worker, real Redis).

Invariants: past a limit an auction is refused 429 with `Retry-After` before any model work (the
worker's token counters do not move) and nothing is billed (the billing stream grows only by the
answered auctions); one API key at its own limit does not hold up another key; an auction costs its
prompt + generation + scoring tokens, one that costs more than one key's share of MAX_TOKENS_IN_FLIGHT
is refused 422 naming its fields, and a key past its share does not hold up another key's auction;
the fair-share priority an auction's worker requests carry changes none of its results.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from app.auction.admission import fair_priority
from app.auction.cost import request_cost_bound
from app.contract.request import AuctionRequest
from app.settings import Settings
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
        **{"API_KEYS": f"{KEY_A},{KEY_B}", "MAX_CANDIDATES": "64", "MAX_TOKENS_LIMIT": "256", **env},
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


def _advertisers(count: int) -> list[dict[str, str]]:
    return [{"id": f"a{i}", "name": f"Ad {i}", "description": "selling guitars"} for i in range(count)]


def _metric(gateway: GatewayProcess, name: str) -> float:
    text = httpx.get(f"{gateway.url}/metrics", headers={"Authorization": f"Bearer {KEY_A}"}).text
    return float(next(line for line in text.splitlines() if line.startswith(name + " ")).split()[-1])


def test_a_request_past_what_one_auction_may_cost_is_422_naming_its_fields(
    slow_worker: WorkerProcess, redis_process: RedisServerProcess, tmp_path: Path
) -> None:
    """The issue's request (M=64, 512 tokens, 16 advertisers, the mixture, a 200-word query, a test
    auction) is refused up front on an idle gateway, 422 naming candidates, max_tokens, advertisers
    and query with its cost and the limit; no model work (it used to be admitted and hold everything)."""
    gateway = _gateway(slow_worker, redis_process, tmp_path, MAX_ADVERTISERS="16", MAX_TOKENS_LIMIT="512")
    try:
        body = {
            "query": " ".join(["guitar"] * 200),
            "advertisers": _advertisers(16),
            "candidates": 64,
            "max_tokens": 512,
            "proposal": "mixture",
            "test": True,
            "tmax_ms": 3000,  # before the fix it ran: end it early
        }
        tokens_before = generation_tokens(slow_worker)
        response = httpx.post(
            f"{gateway.url}/auction", json=body, headers={"Authorization": f"Bearer {KEY_A}"}, timeout=60
        )
        assert response.status_code == 422, response.text
        errors = response.json()["detail"]
        assert {"candidates", "max_tokens", "advertisers", "query"} <= {e["loc"][1] for e in errors}
        limit = Settings().max_tokens_in_flight // 2
        assert all(e["ctx"]["limit"] == limit and e["ctx"]["cost"] > limit for e in errors), errors
        assert generation_tokens(slow_worker) == tokens_before
    finally:
        gateway.stop()


def test_a_one_token_auction_is_costed_by_its_scoring(
    slow_worker: WorkerProcess, redis_process: RedisServerProcess, tmp_path: Path
) -> None:
    """M=1, 1 token, 16 advertisers, a 300-word query: its 17 scored prompts of the query count (it was
    costed at 18 tokens): with one auction allowed 10,000 tokens it is refused, its cost stated."""
    gateway = _gateway(
        slow_worker, redis_process, tmp_path, MAX_ADVERTISERS="16", MAX_TOKENS_IN_FLIGHT="20000"
    )
    try:
        query = " ".join(["play"] * 300)
        body = {"query": query, "advertisers": _advertisers(16), "candidates": 1, "max_tokens": 1}
        response = httpx.post(
            f"{gateway.url}/auction", json=body, headers={"Authorization": f"Bearer {KEY_A}"}, timeout=120
        )
        assert response.status_code == 422, response.text
        costs = {e["ctx"]["cost"] for e in response.json()["detail"]}
        assert len(costs) == 1 and costs.pop() > 17 * 300
        assert "query" in {e["loc"][1] for e in response.json()["detail"]}
    finally:
        gateway.stop()


def test_a_heavy_key_past_its_share_does_not_hold_up_a_light_key(
    slow_worker: WorkerProcess, redis_process: RedisServerProcess, tmp_path: Path
) -> None:
    """Key A runs two large auctions (its share, then the idle rest) and a third waits; key B's small
    auction that arrives next is admitted at once, while A holds its share (FIFO held it behind A's)."""
    heavy = {**SLOW, "candidates": 16, "max_tokens": 200, "seed": 1}
    light = {**SLOW, "candidates": 1, "max_tokens": 4, "seed": 2}
    settings = Settings(max_candidates=64, max_tokens_limit=256)
    cost_heavy = request_cost_bound(AuctionRequest.model_validate(heavy), settings, 1)
    cost_light = request_cost_bound(AuctionRequest.model_validate(light), settings, 1)
    capacity = 2 * cost_heavy + cost_light  # A's two fit, then B's fits beside them; A's third does not
    gateway = _gateway(slow_worker, redis_process, tmp_path, MAX_TOKENS_IN_FLIGHT=str(capacity))
    results: list[httpx.Response] = []
    threads = []
    try:
        with worker_stopped(slow_worker):  # every admitted auction stays admitted while we look
            for key, fields in ((KEY_A, heavy), (KEY_A, heavy), (KEY_A, heavy), (KEY_B, light)):
                thread = threading.Thread(target=_post, args=(gateway.url, key, results), kwargs=fields)
                thread.start()
                threads.append(thread)
                deadline = time.monotonic() + 30
                while _metric(gateway, "mosaic_admission_in_flight") + _metric(
                    gateway, "mosaic_admission_queue_depth"
                ) < len(threads):
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
            assert _metric(gateway, "mosaic_admission_in_flight") == 3  # A, A and B
            assert _metric(gateway, "mosaic_admission_queue_depth") == 1  # A's third
            assert _metric(gateway, "mosaic_admission_tokens_in_flight") == capacity
        for thread in threads:
            thread.join(timeout=300)
        assert [r.status_code for r in results] == [200] * 4, [r.text for r in results]
    finally:
        gateway.stop()


def _outcome(response: httpx.Response) -> dict[str, object]:
    assert response.status_code == 200, response.text
    body = response.json()
    return {k: body[k] for k in ("reply", "chosen_index", "advertisers", "revenue", "effective_sample_size")}


def test_the_fair_share_priority_changes_no_result(
    slow_worker: WorkerProcess, redis_process: RedisServerProcess, tmp_path: Path
) -> None:
    """A seeded auction gives the same reply and payments (bit for bit) sent alone and sent while its
    key holds a large auction in flight, which gives its worker requests another priority (the
    workers reorder waiting work by priority; a request's results never depend on it)."""
    heavy = {**SLOW, "candidates": 16, "max_tokens": 200, "seed": 1}
    light = {**SLOW, "candidates": 3, "max_tokens": 12, "seed": 7}
    settings = Settings(max_candidates=64, max_tokens_limit=256)
    cost_heavy = request_cost_bound(AuctionRequest.model_validate(heavy), settings, 1)
    cost_light = request_cost_bound(AuctionRequest.model_validate(light), settings, 1)
    assert fair_priority(cost_light) != fair_priority(cost_heavy + cost_light)  # alone vs beside
    gateway = _gateway(slow_worker, redis_process, tmp_path)
    alone: list[httpx.Response] = []
    beside: list[httpx.Response] = []
    try:
        _post(gateway.url, KEY_A, alone, **light)
        with worker_stopped(slow_worker):  # the heavy one is admitted (holds its tokens) first
            threads = [threading.Thread(target=_post, args=(gateway.url, KEY_A, beside), kwargs=heavy)]
            threads[0].start()
            deadline = time.monotonic() + 30
            while _metric(gateway, "mosaic_admission_in_flight") < 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            threads.append(threading.Thread(target=_post, args=(gateway.url, KEY_A, beside), kwargs=light))
            threads[1].start()
            while _metric(gateway, "mosaic_admission_in_flight") < 2:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        for thread in threads:
            thread.join(timeout=300)
        assert [r.status_code for r in beside] == [200, 200], [r.text for r in beside]
        light_beside = next(r for r in beside if r.json()["seed"] == light["seed"])
        assert _outcome(light_beside) == _outcome(alone[0])
    finally:
        gateway.stop()
