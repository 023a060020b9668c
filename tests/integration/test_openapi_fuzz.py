"""Schemathesis against the gateway's own /openapi.json: no generated input gets a 5xx.

The gateway runs as a real `mosaic serve` process over a real worker process and a real Redis, with
small limits so that the valid inputs hypothesis finds stay cheap to serve.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.fixtures_gateway import start_gateway_process
from tests.fixtures_redis import RedisServerProcess, start_redis_server
from tests.fixtures_worker import WorkerProcess

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gateway_url(tiny_worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    redis_server: RedisServerProcess = start_redis_server(tmp_path_factory.mktemp("fuzz-redis"))
    gateway = start_gateway_process(tiny_worker.url, redis_server.url, tmp_path_factory.mktemp("fuzz-data"))
    try:
        yield gateway.url
    finally:
        gateway.stop()
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
