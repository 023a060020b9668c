"""Schemathesis against the gateway's own /openapi.json: no generated input gets a 5xx.

The gateway runs as a real `mosaic serve` process over a real worker process and a real Redis, with
small limits so that the valid inputs hypothesis finds stay cheap to serve.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.fixtures_redis import RedisServerProcess
from tests.fixtures_worker import WorkerProcess, free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gateway_url(tiny_worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from tests.fixtures_redis import start_redis_server

    redis_server: RedisServerProcess = start_redis_server(tmp_path_factory.mktemp("fuzz-redis"))
    port = free_port()
    env = {
        **os.environ,
        "WORKER_URLS": tiny_worker.url,
        "REDIS_URL": redis_server.url,
        "PORT": str(port),
        "DATA_DIR": str(tmp_path_factory.mktemp("fuzz-data")),
        "MAX_CANDIDATES": "3",
        "MAX_TOKENS_LIMIT": "4",
        "MAX_ADVERTISERS": "3",
        "DEFAULT_CANDIDATES": "2",
        "DEFAULT_MAX_TOKENS": "4",
        "LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve"], cwd=REPO, env=env, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        while True:
            assert process.poll() is None, "gateway exited"
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() - started < 120
            time.sleep(0.3)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        redis_server.stop()


@pytest.fixture(scope="module")
def api_schema(gateway_url: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{gateway_url}/openapi.json")


def test_no_server_errors(api_schema: schemathesis.BaseSchema) -> None:
    """Every operation, hypothesis-generated inputs (valid and invalid): never a 5xx."""
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {operation.path for operation in operations} >= {"/auction", "/auctions/{auction_id}"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: schemathesis.Case) -> None:
            response = case.call(timeout=60)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.path} -> {response.status_code}: {response.text[:300]}")

        check()
    assert not failures, failures
