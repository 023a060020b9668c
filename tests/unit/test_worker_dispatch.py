"""The worker circuit breaker and the dispatcher (timeouts, hedging, retries), with in-memory attempts."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.auction.worker_dispatch import (
    RetryableWorkerError,
    WorkerDispatcher,
    WorkersUnavailableError,
    auction_deadline,
)
from app.auction.worker_health import WorkerHealth
from app.settings import Settings

URLS = ["http://w0", "http://w1"]


def _settings(**overrides: object) -> Settings:
    base: dict[str, object] = {
        "worker_eject_failures": 2,
        "worker_eject_cooldown_s": 0.2,
        "worker_hedge_min_s": 0.05,
    }
    return Settings(**{**base, **overrides})


def test_breaker_ejects_after_consecutive_failures_then_half_opens() -> None:
    health = WorkerHealth(_settings(), URLS)
    health.record_failure(URLS[0], "timeout")
    assert health.is_up(URLS[0])  # one failure is not enough
    health.record_success(URLS[0])
    health.record_failure(URLS[0], "timeout")
    assert health.is_up(URLS[0])  # a success reset the count
    health.record_failure(URLS[0], "timeout")
    assert not health.is_up(URLS[0])
    assert health.order(0) == [URLS[1], URLS[0]]  # the up one first
    time.sleep(0.25)
    assert health.is_up(URLS[0])  # half-open: a trial
    health.record_failure(URLS[0], "timeout")
    assert not health.is_up(URLS[0])  # one failure in half-open re-opens it
    time.sleep(0.25)
    health.record_success(URLS[0])
    assert health.describe()[URLS[0]]["state"] == "closed"


def test_all_ejected_still_tries_every_worker() -> None:
    health = WorkerHealth(_settings(worker_eject_failures=1), URLS)
    for url in URLS:
        health.record_failure(url, "connect")
    assert health.order(1) == [URLS[1], URLS[0]]


def test_a_stuck_request_is_hedged_and_the_loser_cancelled() -> None:
    settings = _settings()
    dispatcher = WorkerDispatcher(settings, WorkerHealth(settings, URLS))
    cancelled: list[str] = []

    async def attempt(url: str, timeout: float) -> str:
        if url == URLS[0]:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(url)
                raise
        return url

    async def main() -> tuple[str, float]:
        started = time.monotonic()
        answer = await dispatcher.call("generate", 10, 0, attempt)
        return answer, time.monotonic() - started

    answer, took = asyncio.run(main())
    assert answer == URLS[1] and cancelled == [URLS[0]]
    assert took < settings.worker_timeout_base_s  # half the first timeout at most, not 30 s


def test_retryable_failures_move_on_and_final_ones_do_not() -> None:
    settings = _settings(worker_hedge=False)
    dispatcher = WorkerDispatcher(settings, WorkerHealth(settings, URLS))
    tried: list[str] = []

    async def flaky(url: str, timeout: float) -> str:
        tried.append(url)
        if url == URLS[0]:
            raise RetryableWorkerError("connect refused")
        return url

    assert asyncio.run(dispatcher.call("score", 1, 0, flaky)) == URLS[1] and tried == URLS

    async def refused(url: str, timeout: float) -> str:
        raise ValueError("a 4xx: the request itself")

    with pytest.raises(ValueError):
        asyncio.run(dispatcher.call("score", 1, 0, refused))

    async def down(url: str, timeout: float) -> str:
        raise RetryableWorkerError(f"{url} down")

    with pytest.raises(WorkersUnavailableError, match=r"w0 down.*w1 down"):
        asyncio.run(dispatcher.call("score", 1, 0, down))


def test_read_timeout_follows_the_work_and_the_deadline() -> None:
    settings = _settings(worker_timeout_base_s=2, worker_timeout_per_token_s=0.01, worker_timeout_s=10)
    dispatcher = WorkerDispatcher(settings, WorkerHealth(settings, URLS))
    assert dispatcher.read_timeout(100) == pytest.approx(3.0)
    assert dispatcher.read_timeout(10_000) == 10  # the ceiling
    with auction_deadline(0.5):
        assert dispatcher.read_timeout(100) <= 0.5  # never past the auction's deadline
