"""A hung worker (SIGSTOP/SIGCONT) and a dead one (SIGKILL) behind a real gateway: it keeps serving.

Two real tiny-random worker processes, a real gateway process (`mosaic serve`) and a real Redis.
With one worker SIGSTOPped (the kernel still accepts its connections, nothing answers) auctions keep
completing (hedged, then the worker is ejected), /readyz answers within 1 s and turns the worker
off, the metrics say so, and the same seed gives the same auction as with both workers (hedging
never changes an outcome); after SIGCONT the worker comes back (half-open probe). Every 200 is billed
exactly once, nothing else, reconcile clean. Bounded: each test well under a minute.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures_billing import assert_billed_exactly_once, billed_count
from tests.fixtures_gateway import GatewayProcess, start_gateway_process
from tests.fixtures_redis import RedisServerProcess
from tests.fixtures_worker import WorkerProcess, start_worker_process

pytestmark = pytest.mark.timeout(240)

FAST_HEALTH = {
    "WORKER_PROBE_INTERVAL_S": "0.2",
    "WORKER_PROBE_TIMEOUT_S": "0.3",
    "WORKER_EJECT_FAILURES": "2",
    "WORKER_EJECT_COOLDOWN_S": "1",
    "WORKER_HEDGE_MIN_S": "0.3",
}
BODY: dict[str, Any] = {
    "query": "Learning to play the guitar.",
    "advertisers": [
        {"id": "strummaster", "name": "StrumMaster", "description": "selling guitars"},
        {"id": "chordify", "name": "Chordify", "description": "online guitar lessons"},
    ],
    "candidates": 3,
    "max_tokens": 4,
    "seed": 11,
}


@pytest.fixture(scope="module")
def stack(
    redis_process: RedisServerProcess, tmp_path_factory: pytest.TempPathFactory, tiny_worker: WorkerProcess
) -> Iterator[tuple[WorkerProcess, WorkerProcess, GatewayProcess]]:
    # The signalled worker is this module's own; the session's tiny worker stays healthy throughout.
    first, second = start_worker_process(), tiny_worker
    data_dir: Path = tmp_path_factory.mktemp("gateway")
    gateway = start_gateway_process(f"{first.url},{second.url}", redis_process.url, data_dir, **FAST_HEALTH)
    try:
        yield first, second, gateway
    finally:
        if first.alive():
            os.kill(first.pid, signal.SIGCONT)
        gateway.stop()
        first.stop()


def _outcome(answer: dict[str, Any]) -> tuple[Any, ...]:
    return answer["reply"], answer["chosen_index"], tuple(a["payment"] for a in answer["advertisers"])


def _wait(predicate: Any, timeout_s: float) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout_s, f"not within {timeout_s}s"
        time.sleep(0.1)
    return time.monotonic() - started


def test_a_hung_worker_is_ejected_hedged_around_and_readmitted(
    stack: tuple[WorkerProcess, WorkerProcess, GatewayProcess], redis_process: RedisServerProcess
) -> None:
    first, _, gateway = stack
    billed_before = billed_count(redis_process.url)
    served: list[str] = []
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        reference = client.post("/auction", json=BODY).raise_for_status().json()
        served.append(reference["auction_id"])
        os.kill(first.pid, signal.SIGSTOP)
        try:
            stopped = time.monotonic()
            # Auctions keep completing: the first ones hedge around the hung worker, later ones skip it.
            for _ in range(3):
                started = time.monotonic()
                answer = client.post("/auction", json=BODY).raise_for_status().json()
                assert time.monotonic() - started < 20
                assert _outcome(answer) == _outcome(reference)  # hedged or not: the same auction
                served.append(answer["auction_id"])

            def ejected() -> bool:
                started = time.monotonic()
                ready = client.get("/readyz")
                assert time.monotonic() - started < 1.0  # readiness never waits on the hung worker
                return ready.status_code == 200 and ready.json()["workers"][first.url] is False

            _wait(ejected, 10)
            assert time.monotonic() - stopped < 30
            metrics = client.get("/metrics").text
            assert f'mosaic_worker_up{{worker="{first.url}"}} 0.0' in metrics
            assert f'mosaic_worker_ejections_total{{worker="{first.url}"}}' in metrics
            started = time.monotonic()
            answer = client.post("/auction", json=BODY).raise_for_status().json()
            served.append(answer["auction_id"])
            assert _outcome(answer) == _outcome(reference)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        # Half-open: after the cool-down a good probe brings it back.
        _wait(lambda: client.get("/readyz").json()["workers"][first.url] is True, 10)
        answer = client.post("/auction", json=BODY).raise_for_status().json()
        served.append(answer["auction_id"])
    assert_billed_exactly_once(redis_process.url, served, billed_before)


def test_a_killed_worker_is_ejected_and_auctions_keep_completing(
    stack: tuple[WorkerProcess, WorkerProcess, GatewayProcess], redis_process: RedisServerProcess
) -> None:
    first, _, gateway = stack
    billed_before = billed_count(redis_process.url)
    served: list[str] = []
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        first.kill()
        unseeded = {k: v for k, v in BODY.items() if k != "seed"}
        for _ in range(3):
            answer = client.post("/auction", json=unseeded).raise_for_status().json()
            served.append(answer["auction_id"])
        _wait(lambda: client.get("/readyz").json()["workers"][first.url] is False, 10)
        assert client.get("/readyz").status_code == 200  # one healthy worker is enough
    assert_billed_exactly_once(redis_process.url, served, billed_before)
