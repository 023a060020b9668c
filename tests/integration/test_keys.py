"""API keys: platform and advertiser scopes, digests, refused placeholders, and the workers' key.

Real processes: a tiny-random worker process started with WORKER_API_KEY, a real Redis server; the
gateway app runs in process (TestClient drives its lifespan) or, for the start-up refusal, as a real
`mosaic serve` process. Invariants: an advertiser key reads only its own account and auctions and
never runs one; a bare `Bearer` never authenticates; a known placeholder or empty key never starts a
gateway without ALLOW_INSECURE_KEYS; a worker with a key serves nothing on /v1 or /tokenize without it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.gateway.app import create_app
from app.gateway.security import InsecureKeysError, KeyRing, check_key_settings
from app.settings import Settings
from tests.fixtures_redis import RedisServerProcess
from tests.fixtures_worker import WorkerProcess, start_worker_process

REPO = Path(__file__).resolve().parents[2]
WORKER_KEY = "worker-key-7f1c2a"
PLATFORM_KEY = "platform-key-91ab"
STRUM_KEY = "strum-key-33de"
CHORD_KEY = "chord-key-55aa"

BODY = {
    "query": "Learning to play the guitar.",
    "advertisers": [
        {"id": "strummaster", "name": "StrumMaster", "description": "selling guitars"},
        {"id": "chordify", "name": "Chordify", "description": "online guitar lessons"},
    ],
    "candidates": 2,
    "max_tokens": 3,
    "seed": 5,
}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def keyed_worker() -> Iterator[WorkerProcess]:
    worker = start_worker_process("tiny-random", env={"WORKER_API_KEY": WORKER_KEY})
    yield worker
    worker.stop()


def settings_for(worker: WorkerProcess, redis: RedisServerProcess, tmp: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "worker_urls": [worker.url],
        "redis_url": redis.url,
        "data_dir": tmp,
        "log_json": False,
        "billing_block_ms": 100,
        "worker_api_key": WORKER_KEY,
        # The platform key as its digest: the config holds no secret.
        "api_keys": ["sha256:" + hashlib.sha256(PLATFORM_KEY.encode()).hexdigest()],
        "advertiser_api_keys": {"strummaster": [STRUM_KEY], "chordify": [CHORD_KEY]},
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def gateway(
    keyed_worker: WorkerProcess, redis_process: RedisServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    settings = settings_for(keyed_worker, redis_process, tmp_path_factory.mktemp("keys"))
    with TestClient(create_app(settings)) as client:
        yield client


def test_worker_requires_its_key_on_model_routes(keyed_worker: WorkerProcess) -> None:
    url = keyed_worker.url
    assert httpx.get(f"{url}/health").status_code == 200
    assert httpx.get(f"{url}/metrics").status_code == 200
    body = {"model": "tiny-random", "prompt": [1, 2, 3], "max_tokens": 1}
    for headers in ({}, bearer("wrong"), {"Authorization": "Bearer"}, {"Authorization": WORKER_KEY}):
        assert httpx.get(f"{url}/v1/models", headers=headers).status_code == 401
        refused = httpx.post(f"{url}/v1/completions", json=body, headers=headers)
        assert refused.status_code == 401 and refused.json() == {"error": "Unauthorized"}
        tokenize = {"model": "tiny-random", "prompt": "hi"}
        assert httpx.post(f"{url}/tokenize", json=tokenize, headers=headers).status_code == 401
    assert httpx.get(f"{url}/v1/models", headers=bearer(WORKER_KEY)).status_code == 200


def test_platform_key_runs_auctions_and_reads_everything(gateway: TestClient) -> None:
    served = gateway.post("/auction", json=BODY, headers=bearer(PLATFORM_KEY))
    assert served.status_code == 200, served.text
    auction_id = served.json()["auction_id"]
    for path in (f"/auctions/{auction_id}", "/ledger/summary", "/ledger/advertisers/chordify", "/metrics"):
        assert gateway.get(path, headers=bearer(PLATFORM_KEY)).status_code == 200, path
    # The configured digest is not itself a key.
    digest = "sha256:" + hashlib.sha256(PLATFORM_KEY.encode()).hexdigest()
    assert gateway.post("/auction", json=BODY, headers=bearer(digest)).status_code == 401


def test_advertiser_key_reads_only_its_own(gateway: TestClient) -> None:
    served = gateway.post("/auction", json=BODY, headers=bearer(PLATFORM_KEY))
    assert served.status_code == 200
    auction_id = served.json()["auction_id"]
    solo = gateway.post(
        "/auction", json={**BODY, "advertisers": BODY["advertisers"][1:]}, headers=bearer(PLATFORM_KEY)
    )
    assert solo.status_code == 200

    strum = bearer(STRUM_KEY)
    assert gateway.get("/ledger/advertisers/strummaster", headers=strum).status_code == 200
    assert gateway.get("/ledger/advertisers/chordify", headers=strum).status_code == 403
    assert gateway.get("/ledger/summary", headers=strum).status_code == 403
    assert gateway.get("/metrics", headers=strum).status_code == 403
    refused = gateway.post("/auction", json=BODY, headers=strum)
    assert refused.status_code == 403 and "strummaster" in refused.json()["detail"]
    assert gateway.get(f"/auctions/{auction_id}", headers=strum).status_code == 200
    # An auction strummaster was not in: as if it did not exist.
    assert gateway.get(f"/auctions/{solo.json()['auction_id']}", headers=strum).status_code == 404
    assert gateway.get(f"/auctions/{solo.json()['auction_id']}", headers=bearer(CHORD_KEY)).status_code == 200


def test_bare_bearer_and_garbage_never_authenticate(gateway: TestClient) -> None:
    for header in ("Bearer", "Bearer ", "Basic " + PLATFORM_KEY, PLATFORM_KEY, "Bearer  x"):
        assert gateway.post("/auction", json=BODY, headers={"Authorization": header}).status_code == 401


def test_gateway_without_the_workers_key_gets_refused_by_them(
    keyed_worker: WorkerProcess, redis_process: RedisServerProcess, tmp_path: Path
) -> None:
    settings = settings_for(keyed_worker, redis_process, tmp_path, worker_api_key=None, worker_retries=0)
    with TestClient(create_app(settings)) as client:
        response = client.post("/auction", json=BODY, headers=bearer(PLATFORM_KEY))
    assert response.status_code in (502, 503) and response.status_code != 200


@pytest.mark.parametrize(
    "overrides",
    [
        {"api_keys": [""]},
        {"api_keys": ["  "]},
        {"api_keys": ["good-key-1", "mosaic-local-dev-key"]},
        {"api_keys": ["change-me-api-key"]},
        {"advertiser_api_keys": {"a": [""]}},
    ],
)
def test_insecure_keys_refuse_to_start(overrides: dict[str, Any]) -> None:
    with pytest.raises(InsecureKeysError):
        check_key_settings(Settings(**overrides))
    check_key_settings(Settings(**overrides, allow_insecure_keys=True))  # development only
    # Even allowed, an empty key matches nothing.
    assert KeyRing(Settings(**overrides, allow_insecure_keys=True)).identify("") is None


def test_auth_off_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        check_key_settings(Settings(api_keys=[]))
    assert any("authentication is OFF" in record.getMessage() for record in caplog.records)


def test_mosaic_serve_refuses_a_placeholder_key(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "API_KEYS": "change-me-api-key",
        "DATA_DIR": str(tmp_path),
        "WORKER_URLS": "http://127.0.0.1:9",
        "REDIS_URL": "redis://127.0.0.1:9/0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve"], cwd=REPO, env=env, capture_output=True, timeout=120
    )
    assert done.returncode != 0
    assert b"known placeholder" in done.stderr and b"ALLOW_INSECURE_KEYS" in done.stderr


def test_readyz_details_only_for_a_platform_key(gateway: TestClient, keyed_worker: WorkerProcess) -> None:
    """Invariant: /readyz tells every caller whether the gateway is ready (its status and `ready`, for
    probes that carry no key) and nothing else; the workers' URLs and Redis' state only to a platform
    key: never without a key, with a wrong or bare one, or with an advertiser key."""
    for headers in ({}, bearer("wrong"), {"Authorization": "Bearer"}, bearer(STRUM_KEY)):
        answer = gateway.get("/readyz", headers=headers)
        assert answer.status_code == 200 and answer.json() == {"ready": True}, answer.text
    full = gateway.get("/readyz", headers=bearer(PLATFORM_KEY))
    assert full.status_code == 200
    assert full.json() == {"ready": True, "workers": {keyed_worker.url: True}, "redis": True}
