"""Re-scoring served auctions (`app.verification.rescore.rescore_checks`) on real worker processes.

One real gateway (`mosaic serve`) over worker A (tiny-random, 1 torch thread, the batch-invariant CPU
path), one real Redis. Invariants:
* a served auction's record re-scores BIT FOR BIT on the worker that scored it, and on a second
  process B of the same build whose batching differs (continuous batching off, other batch and
  scoring token budgets): the same engine identity, since those settings change no bits there;
* on a process C with 2 torch threads (another identity: `rescore.mode` names `kernels.threads`) it
  re-scores within the stated tolerance;
* one tampered log-prob (log_ref, log_context[i], log_proposal) or token fails naming the candidate and
  the field; a worker of another model fails `rescore.engine` naming `model`; a record whose
  weights hash is not the worker's fails naming `weights_sha256`;
* an advertiser's sealed view re-scores what it holds (log π_ref, her own log π_i, the reference
  draws), bit for bit, and says what it could not (the sealed context prompt).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.verification.rescore import rescore_checks
from tests.fixtures_gateway import GatewayProcess, start_gateway_process
from tests.fixtures_redis import RedisServerProcess
from tests.fixtures_worker import WorkerProcess, start_worker_process

PLATFORM_KEY = "rescore-platform-key"
ALPHA_KEY = "rescore-alpha-key"
LIMITS = {"MAX_CANDIDATES": "6", "MAX_TOKENS_LIMIT": "8", "MAX_ADVERTISERS": "3"}
ADVERTISERS = [
    {"id": "alpha", "name": "StrumMaster", "description": "guitar lessons online", "value_scale": 0.5},
    {"id": "bravo", "name": "Chordify", "description": "chords for any song", "value_scale": 0.3},
    {
        "id": "charlie",
        "name": "FretBuddy",
        "description": "a tuner app",
        "instruction": "Mention FretBuddy, the tuner.",
        "value_scale": 0.2,
    },
]


@pytest.fixture(scope="module")
def worker_a() -> Iterator[WorkerProcess]:
    worker = start_worker_process("tiny-random", env={"WORKER_TORCH_THREADS": "1"})
    try:
        yield worker
    finally:
        worker.stop()


@pytest.fixture(scope="module")
def gateway(
    worker_a: WorkerProcess, redis_process: RedisServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    process = start_gateway_process(
        worker_a.url,
        redis_process.url,
        tmp_path_factory.mktemp("rescore"),
        API_KEYS=PLATFORM_KEY,
        ADVERTISER_API_KEYS=json.dumps({"alpha": [ALPHA_KEY]}),
        **LIMITS,
    )
    try:
        yield process
    finally:
        process.stop()


def _auction(gateway: GatewayProcess, proposal: str, seed: int) -> str:
    body = {
        "query": "How do I learn to play the guitar?",
        "advertisers": ADVERTISERS,
        "candidates": 5,
        "max_tokens": 6,
        "proposal": proposal,
        "seed": seed,
    }
    headers = {"Authorization": f"Bearer {PLATFORM_KEY}"}
    response = httpx.post(f"{gateway.url}/auction", json=body, headers=headers, timeout=120)
    assert response.status_code == 200, response.text
    return str(response.json()["auction_id"])


def _record(gateway: GatewayProcess, auction_id: str, key: str = PLATFORM_KEY) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    response = httpx.get(f"{gateway.url}/auctions/{auction_id}", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    record: dict[str, Any] = response.json()
    return record


@pytest.fixture(scope="module")
def records(gateway: GatewayProcess) -> dict[str, dict[str, Any]]:
    """One served auction per proposal (the mixture draws from both pools)."""
    return {
        p: _record(gateway, _auction(gateway, p, 11 + i))
        for i, p in enumerate(("mixture", "context", "reference"))
    }


def _rescore(record: dict[str, Any], url: str, **options: Any) -> dict[str, Any]:
    checks = asyncio.run(rescore_checks(record, url, **options))
    return {check.name: check for check in checks}


def _all_pass(checks: dict[str, Any]) -> None:
    failed = {name: check.detail for name, check in checks.items() if not check.ok}
    assert not failed, failed


@pytest.mark.parametrize("proposal", ["mixture", "context", "reference"])
def test_a_served_auction_rescores_bit_for_bit_on_its_worker(
    records: dict[str, dict[str, Any]], worker_a: WorkerProcess, proposal: str
) -> None:
    """Same engine identity: log_ref, every log_context[i], log_proposal and the redrawn tokens agree
    bit for bit (the float64 bits), and the mode says so."""
    record = records[proposal]
    assert record["engine"]["identities"] and record["candidates"][0]["log_context"].keys() == {
        "alpha",
        "bravo",
        "charlie",
    }
    checks = _rescore(record, worker_a.url)
    _all_pass(checks)
    assert "same engine identity: bit for bit" in checks["rescore.mode"].detail
    assert {"rescore.log_ref", "rescore.log_context", "rescore.log_proposal", "rescore.draws"} <= set(checks)
    assert "bit for bit" in checks["rescore.log_proposal"].detail
    assert "the same tokens" in checks["rescore.draws"].detail
