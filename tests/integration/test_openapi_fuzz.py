"""Schemathesis against the gateway's own /openapi.json: the document says what the server does.

The gateway runs as a real `mosaic serve` process (API_KEYS set) over a real worker process and a
real Redis, with small limits so that the valid inputs hypothesis finds stay cheap to serve.

* `test_no_server_errors`: hypothesis-generated inputs (valid and invalid) per operation: no 5xx.
* `test_oversized_literals_on_every_body_operation`: the two bodies that once gave a 500 (an integer
  past Python's 4,300 digits, a value nested 952 deep), sent to every operation the document says
  takes a body: a 422 naming the path, with and without a key.
* `test_every_check_passes`: the schemathesis CLI with ``--checks all`` (server errors, status codes,
  content types, response schemas, positive data accepted, negative data rejected, auth not
  ignored, ...) over every phase; it must report no failure at all. Examples per operation:
  SCHEMATHESIS_EXAMPLES (default 10 inside `make test`; the full count is
  ``SCHEMATHESIS_EXAMPLES=200 .venv/bin/pytest tests/integration/test_openapi_fuzz.py``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.fixtures_gateway import start_gateway_process
from tests.fixtures_redis import RedisServerProcess, start_redis_server
from tests.fixtures_worker import WorkerProcess

REPO = Path(__file__).resolve().parents[2]
API_KEY = "fuzz-platform-key-5d1e"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "10"))
SEED = os.environ.get("SCHEMATHESIS_SEED", "20261201")


@pytest.fixture(scope="module")
def gateway_url(tiny_worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    redis_server: RedisServerProcess = start_redis_server(tmp_path_factory.mktemp("fuzz-redis"))
    gateway = start_gateway_process(
        tiny_worker.url,
        redis_server.url,
        tmp_path_factory.mktemp("fuzz-data"),
        API_KEYS=API_KEY,
        # Character limits small enough that no schema-valid body can reach the token limit (at most
        # 4 byte-level tokens per character: 4 x (100 + 2 x (20 + 60 + 60)) + the templates < 2040),
        # which the schema cannot state; the token limit has its own test (test_hostile_input).
        MAX_ADVERTISERS="2",
        MAX_QUERY_CHARS="100",
        MAX_NAME_CHARS="20",
        MAX_DESCRIPTION_CHARS="60",
        MAX_INSTRUCTION_CHARS="60",
        MAX_PROMPT_TOKENS="2040",
    )
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
            response = case.call(timeout=60, headers=AUTH)
            # a 504 past the request's own `tmax_ms` is its documented answer (tested elsewhere)
            deadline = response.status_code == 504 and "tmax_ms" in response.text
            if response.status_code >= 500 and not deadline:
                failures.append(f"{case.method} {case.path} -> {response.status_code}: {response.text[:300]}")

        check()
    assert not failures, failures


# Raw bodies the generators cannot produce (json.dumps refuses such an int), each with the path named.
OVERSIZED = {
    "big-integer": (b'{"tau":' + b"7" * 4301 + b"}", ["body", "tau"]),
    "nested-952": (b'{"tau":' + b"[" * 952 + b"]" * 952 + b"}", ["body", "tau", *[0] * 63]),
}


def test_oversized_literals_on_every_body_operation(gateway_url: str) -> None:
    """Invariant: every operation with a request body in /openapi.json answers these bodies 422 naming
    the offending path, with the platform key and without one (a new body route is covered at once)."""
    document = httpx.get(f"{gateway_url}/openapi.json", timeout=30).json()
    targets = [
        (method, re.sub(r"\{[^}]+\}", "abc123", path))
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation
    ]
    assert ("post", "/auction") in targets and len(targets) >= 2, targets
    for method, path in targets:
        for headers in (AUTH, {}):
            for name, (body, loc) in OVERSIZED.items():
                response = httpx.request(
                    method,
                    f"{gateway_url}{path}",
                    content=body,
                    headers={**headers, "Content-Type": "application/json"},
                    timeout=60,
                )
                assert response.status_code == 422, (method, path, name, response.text[:300])
                assert [error["loc"] for error in response.json()["detail"]] == [loc], response.text


def test_every_check_passes(gateway_url: str, tmp_path: Path) -> None:
    """`schemathesis run --checks all`: no failure of any check, in any phase."""
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks", "PYTHONPATH": str(REPO)}
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{gateway_url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        SEED,
        "--workers",
        "1",
        "--request-timeout",
        "60",
        "-H",
        f"Authorization: Bearer {API_KEY}",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    summary = done.stdout[-6000:]
    print(summary)  # the counts (cases, checks, failures): `pytest -s` shows them
    assert done.returncode == 0, summary
    assert "Test cases:" in summary and " failures" not in summary.split("SUMMARY")[-1], summary
