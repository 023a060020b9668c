"""Verifiable auctions end to end: real `mosaic serve` processes over a real tiny-random worker and Redis.

Invariants:
- the signing keys are served without an API key at /.well-known/mosaic-keys (a JWK set whose kid is
  each key's thumbprint, cacheable) and the key file is created once in DATA_DIR/keys, mode 0600;
- a served auction's stored record verifies (`mosaic_client` sync and async, `mosaic verify`): the
  full record with a platform key, her sealed view with an advertiser key; a no-fill too, and a
  campaign auction whose budget binds (the record's budget fit; the owner's part holds her row);
- the record as the gateway stored it, with one value changed (a log-prob, τ, a payment, a reward,
  the reply, a dropped candidate), fails `mosaic verify --record` with exit 1 and the output names
  what disagrees; usage errors and an unknown auction exit 2;
- with BILLING_MODE=render the record verifies before and after its render (the charge's state is
  not signed); a restart keeps the key; after `mosaic keys rotate` and a restart the old records
  still verify (the old key served as retired) and new ones are signed by the new key; with
  ATTESTATION_ENABLED=false a record is stored unsigned and fails verification.
"""

from __future__ import annotations

import asyncio
import copy
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from app.attestation.keys import public_keys
from app.cli import cli
from mosaic_client import AsyncMosaicClient, MosaicClient
from tests.fixtures_gateway import GatewayProcess, start_gateway_process
from tests.fixtures_redis import RedisServerProcess
from tests.fixtures_worker import WorkerProcess
from tests.unit.test_verification import tamper

PLATFORM_KEY = "verify-test-platform-key"
ALPHA_KEY = "verify-test-alpha-key"
ADVERTISERS = [
    {"id": "alpha7", "name": "Alphaqz", "description": "guitars", "value_scale": 0.015},
    {"id": "bravo7", "name": "Bravoqz", "description": "lessons", "value_scale": 0.0725},
    {"id": "charlie7", "name": "Charlieqz", "description": "amps", "value_scale": 0.0375},
]
BODY = {"query": "Learning to play the guitar.", "advertisers": ADVERTISERS, "candidates": 3, "max_tokens": 4}
PLATFORM = {"Authorization": f"Bearer {PLATFORM_KEY}"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("verify-gateway")


@pytest.fixture(scope="module")
def gateway(
    tiny_worker: WorkerProcess, redis_process: RedisServerProcess, data_dir: Path
) -> Iterator[GatewayProcess]:
    process = start_gateway_process(
        tiny_worker.url,
        redis_process.url,
        data_dir,
        API_KEYS=PLATFORM_KEY,
        ADVERTISER_API_KEYS=json.dumps({"alpha7": [ALPHA_KEY]}),
    )
    yield process
    process.stop()


def serve(url: str, body: dict[str, Any], headers: dict[str, str] = PLATFORM) -> str:
    answer = httpx.post(f"{url}/auction", json=body, headers=headers, timeout=120)
    assert answer.status_code == 200, answer.text
    auction_id: str = answer.json()["auction_id"]
    return auction_id


@pytest.fixture(scope="module")
def auction_id(gateway: GatewayProcess) -> str:
    return serve(gateway.url, {**BODY, "seed": 35})


def stored(url: str, auction_id: str, headers: dict[str, str] = PLATFORM) -> dict[str, Any]:
    answer = httpx.get(f"{url}/auctions/{auction_id}", headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    record: dict[str, Any] = answer.json()
    return record


def test_the_keys_are_served_without_a_key_and_kept_0600(gateway: GatewayProcess, data_dir: Path) -> None:
    answer = httpx.get(f"{gateway.url}/.well-known/mosaic-keys", timeout=30)
    assert answer.status_code == 200, answer.text
    assert "max-age" in answer.headers["cache-control"]
    body = answer.json()
    assert [(k["kty"], k["crv"], k["status"]) for k in body["keys"]] == [("OKP", "Ed25519", "active")]
    assert list(public_keys(body)) == [body["keys"][0]["kid"]]  # kid = the key's thumbprint
    assert stat.S_IMODE((data_dir / "keys" / "active.pem").stat().st_mode) == 0o600


def test_a_served_auction_verifies_full_and_sealed(gateway: GatewayProcess, auction_id: str) -> None:
    with MosaicClient(gateway.url, api_key=PLATFORM_KEY) as platform:
        full = platform.verify(auction_id)
    assert full.ok and full.view == "full", full.failures()
    assert {"signature", "record", "parts", "allocation", "payments"} <= {c.name for c in full.checks}

    async def sealed() -> Any:
        async with AsyncMosaicClient(gateway.url, api_key=ALPHA_KEY) as alpha:
            return await alpha.verify(auction_id), await alpha.get_auction_json(auction_id)

    report, view = asyncio.run(sealed())
    assert report.ok and report.view == "sealed", report.failures()
    assert view["attestation"]["part"]["advertiser_id"] == "alpha7" and "salts" not in view["attestation"]
    assert "bravo7" not in json.dumps(view) and "charlie7" not in json.dumps(view)


def test_a_no_fill_verifies(gateway: GatewayProcess) -> None:
    auction_id = serve(gateway.url, {**BODY, "regs": {"coppa": True}})  # ads off: nobody bids
    with MosaicClient(gateway.url, api_key=PLATFORM_KEY) as platform:
        report = platform.verify(auction_id)
    assert report.ok, report.failures()


def test_a_campaign_auction_with_a_binding_budget_verifies(gateway: GatewayProcess) -> None:
    """A campaign whose budget binds (its rewards lowered by the fit): the record, with its budget
    fit, verifies, and so does the campaign owner's sealed view (her part holds her budget row)."""
    campaign = {"owner": "alpha7", "name": "Alphaqz", "description": "guitars", "value_scale": 0.5}
    created = httpx.post(
        f"{gateway.url}/campaigns",
        json={**campaign, "budget": {"total_micro": 40}},
        headers=PLATFORM,
        timeout=30,
    )
    assert created.status_code == 201, created.text
    body = {**BODY, "advertisers": ADVERTISERS[1:], "campaigns": [created.json()["id"]], "seed": 5}
    auction_id = serve(gateway.url, body)
    record = stored(gateway.url, auction_id)
    fit = (record.get("budgets") or [{}])[0]
    assert fit.get("advertiser_id") == "alpha7" and fit["budget_multiplier"] < 1.0, fit  # it binds
    with MosaicClient(gateway.url, api_key=PLATFORM_KEY) as platform:
        report = platform.verify(auction_id)
    assert report.ok, report.failures()
    with MosaicClient(gateway.url, api_key=ALPHA_KEY) as alpha:
        view = alpha.get_auction_json(auction_id)
        assert view["attestation"]["part"]["budget"]["campaign_id"] == created.json()["id"]
        sealed = alpha.verify(auction_id)
    assert sealed.ok, sealed.failures()


def cli_verify(*args: str) -> Any:
    return CliRunner().invoke(cli, ["verify", *args])


def test_the_cli_verifies_and_names_each_tamper(
    gateway: GatewayProcess, auction_id: str, tmp_path: Path
) -> None:
    result = cli_verify(auction_id, "--url", gateway.url, "--api-key", PLATFORM_KEY)
    assert result.exit_code == 0, result.output
    assert "verified" in result.output and "signature" in result.output
    as_json = json.loads(
        cli_verify(auction_id, "--url", gateway.url, "--api-key", PLATFORM_KEY, "--json").output
    )
    assert as_json["ok"] is True and as_json["checks"][1]["name"] == "signature"
    keys = tmp_path / "keys.json"
    keys.write_text(httpx.get(f"{gateway.url}/.well-known/mosaic-keys", timeout=30).text)
    record = stored(gateway.url, auction_id)
    ids = [row["id"] for row in record["advertisers"]]
    named = {
        "log_ref": "candidates[2]",
        "tau": "tau: the record says 1.6",
        "payment": ids[1],
        "dropped": "a candidate was dropped",
        "reward": ids[2],
        "reply": "the reply is not candidates[",
    }
    for how, words in named.items():
        saved = tmp_path / f"{how}.json"
        saved.write_text(json.dumps(tamper(record, how) if how != "dropped" else _dropped(record)))
        result = cli_verify("--record", str(saved), "--keys", str(keys), "--json")
        assert result.exit_code == 1, (how, result.output)
        report = json.loads(result.output)
        assert any(words in check["detail"] for check in report["checks"] if not check["ok"]), (how, report)


def _dropped(record: dict[str, Any]) -> dict[str, Any]:
    tampered = copy.deepcopy(record)
    del tampered["candidates"][-1]
    return tampered


def test_cli_usage_errors_exit_2(gateway: GatewayProcess, tmp_path: Path) -> None:
    assert cli_verify().exit_code == 2
    assert cli_verify("--record", str(tmp_path / "missing.json")).exit_code == 2
    unknown = cli_verify("f" * 32, "--url", gateway.url, "--api-key", PLATFORM_KEY)
    assert unknown.exit_code == 2 and "NotFound" in unknown.output, unknown.output


def test_the_cli_checks_inclusion_in_the_log_and_rescores_on_the_worker(
    tiny_worker: WorkerProcess, gateway: GatewayProcess, auction_id: str
) -> None:
    """Invariant: `mosaic verify ID --url GATEWAY --rescore WORKER` on a served auction passes every
    check, the leaf's inclusion under a signed tree head (`log.*`, from GET /auctions/{id}/proof) and the
    re-score on the worker that scored it (`rescore.*`, bit for bit) included; a worker that is not there
    fails the re-score, naming it, and nothing else."""
    args = (auction_id, "--url", gateway.url, "--api-key", PLATFORM_KEY, "--json")
    result = cli_verify(*args, "--rescore", tiny_worker.url)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    names = [check["name"] for check in report["checks"]]
    assert {"log.head_signature", "log.leaf_hash", "log.inclusion"} <= set(names), names
    assert names.index("log.inclusion") < names.index("tau")  # the log before the mechanism
    assert any(name.startswith("rescore.log_ref") for name in names), names
    gone = cli_verify(*args, "--rescore", "http://127.0.0.1:9")
    assert gone.exit_code == 1, gone.output
    failed = [check for check in json.loads(gone.output)["checks"] if not check["ok"]]
    assert failed and all(check["name"].startswith("rescore") for check in failed), failed


def test_render_restart_rotation_and_unsigned(
    tiny_worker: WorkerProcess, redis_process: RedisServerProcess, tmp_path: Path
) -> None:
    def start(**env: str) -> GatewayProcess:
        return start_gateway_process(
            tiny_worker.url, redis_process.url, tmp_path, BILLING_MODE="render", **env
        )

    def verified(url: str, auction_id: str) -> bool:
        with MosaicClient(url) as client:
            report = client.verify(auction_id)
        return report.ok

    gateway = start()
    try:
        first = serve(gateway.url, {**BODY, "seed": 7}, {})
        assert stored(gateway.url, first, {})["billing"] == "pending" and verified(gateway.url, first)
        assert httpx.post(f"{gateway.url}/auctions/{first}/render", timeout=30).status_code == 200
        assert stored(gateway.url, first, {})["billing"] == "billed" and verified(gateway.url, first)
        old_kid = stored(gateway.url, first, {})["attestation"]["statement"]["kid"]
    finally:
        gateway.stop()
    gateway = start()
    try:  # a restart keeps the key
        assert verified(gateway.url, first)
        assert httpx.get(f"{gateway.url}/.well-known/mosaic-keys").json()["keys"][0]["kid"] == old_kid
    finally:
        gateway.stop()
    rotated = CliRunner().invoke(cli, ["keys", "rotate", "--directory", str(tmp_path / "keys")])
    assert rotated.exit_code == 0, rotated.output
    gateway = start()
    try:
        served = httpx.get(f"{gateway.url}/.well-known/mosaic-keys").json()["keys"]
        assert [k["status"] for k in served] == ["active", "retired"] and served[1]["kid"] == old_kid
        assert verified(gateway.url, first)  # signed by the retired key
        second = serve(gateway.url, {**BODY, "seed": 8}, {})
        assert stored(gateway.url, second, {})["attestation"]["statement"]["kid"] == served[0]["kid"]
        assert verified(gateway.url, second)
    finally:
        gateway.stop()
    gateway = start(ATTESTATION_ENABLED="false")
    try:
        unsigned = serve(gateway.url, {**BODY, "seed": 9}, {})
        assert "attestation" not in stored(gateway.url, unsigned, {}) and not verified(gateway.url, unsigned)
    finally:
        gateway.stop()
