"""`mosaic_client` and `POST /auctions/{id}/resolve` against a real `mosaic serve` process.

The gateway runs over a real tiny-random worker process and a real Redis server (API keys on, an
advertiser key too). Invariants: the what-if equals `app.mechanism` recomputed from the stored record
to 1e-12 and never bills or stores anything (the billing stream and the audit records are unchanged);
it answers 404 for unknown ids, 409 for an advertiser the auction lacks, and follows the read routes'
keys (an advertiser key gets her sealed view and may change only her own value scale); the client
returns the API's models and raises one exception per status; its retries resend the same
Idempotency-Key (a real socket server that answers 503 twice); `mosaic auction --url` goes through it.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import redis
from typer.testing import CliRunner

from app import mechanism
from app.cli import cli
from mosaic_client import (
    AsyncMosaicClient,
    AuctionRecord,
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    MosaicClient,
    NotFoundError,
    PermissionDeniedError,
    SealedAuctionRecord,
    SealedWhatIfResponse,
    TransportError,
    UnavailableError,
    WhatIfResponse,
    resolve_own,
)
from tests.fixtures_gateway import GatewayProcess, start_gateway_process
from tests.fixtures_redis import RedisServerProcess
from tests.fixtures_worker import WorkerProcess, free_port

KEY = "client-test-platform-key"
STRUM_KEY = "client-test-strum-key"
QUERY = "Learning to play the guitar."
ADVERTISERS = ["strummaster:StrumMaster:selling guitars", "chordify:Chordify:online guitar lessons"]
TOLERANCE = 1e-12


@pytest.fixture(scope="module")
def gateway(
    tiny_worker: WorkerProcess, redis_process: RedisServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    process = start_gateway_process(
        tiny_worker.url,
        redis_process.url,
        tmp_path_factory.mktemp("client-data"),
        API_KEYS=KEY,
        ADVERTISER_API_KEYS=json.dumps({"strummaster": [STRUM_KEY]}),
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> Iterator[MosaicClient]:
    with MosaicClient(gateway.url, api_key=KEY, retries=0) as mosaic:
        yield mosaic


@pytest.fixture(scope="module")
def record(client: MosaicClient) -> AuctionRecord:
    answer = client.auction(QUERY, ADVERTISERS, candidates=3, max_tokens=4, seed=11, include_candidates=True)
    stored = client.get_auction(answer.auction_id)
    assert isinstance(stored, AuctionRecord)  # a platform key: the full record
    assert stored.candidates == answer.candidates
    assert [a.id for a in stored.advertisers] == ["strummaster", "chordify"]
    return stored


def _arrays(record: AuctionRecord, ids: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    candidates = record.candidates or []
    rewards = np.array([[c.rewards[aid] for c in candidates] for aid in ids])
    return rewards, np.array([c.log_ref for c in candidates]), np.array([c.log_proposal for c in candidates])


def _unbilled_state(redis_url: str) -> tuple[int, int]:
    connection = redis.Redis.from_url(redis_url)
    try:
        stream = int(connection.xlen("mosaic:billing"))  # type: ignore[arg-type]
        records = len(list(connection.scan_iter("mosaic:auction:*")))
        return stream, records
    finally:
        connection.close()


def test_the_same_tau_gives_the_stored_outcome(client: MosaicClient, record: AuctionRecord) -> None:
    result = client.resolve(record.auction_id, record.tau)
    assert isinstance(result, WhatIfResponse)  # a platform key: every advertiser's figures
    stored = [c.probability for c in record.candidates or []]
    np.testing.assert_allclose(result.probabilities, stored, rtol=0, atol=TOLERANCE)
    for got, want in zip(result.advertisers, record.advertisers, strict=True):
        assert got.payment == pytest.approx(want.payment, rel=TOLERANCE, abs=TOLERANCE)
    assert result.effective_sample_size == pytest.approx(record.effective_sample_size, rel=TOLERANCE)


@pytest.mark.parametrize("tau", [0.05, 0.5, 3.0, 250.0])
def test_whatif_is_the_mechanism_on_the_stored_candidates(
    client: MosaicClient, record: AuctionRecord, redis_process: RedisServerProcess, tau: float
) -> None:
    before = _unbilled_state(redis_process.url)
    result = client.resolve(record.auction_id, tau)
    subset = client.resolve(record.auction_id, tau, advertisers=["chordify"], value_scales={"chordify": 2.5})
    assert isinstance(result, WhatIfResponse) and isinstance(subset, WhatIfResponse)
    assert _unbilled_state(redis_process.url) == before  # nothing billed, nothing stored
    rewards, log_ref, log_q = _arrays(record, ["strummaster", "chordify"])
    probabilities, payments = mechanism.allocation_and_payments(rewards, log_ref, log_q, tau)
    np.testing.assert_allclose(result.probabilities, probabilities, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(
        [a.payment for a in result.advertisers], payments, rtol=TOLERANCE, atol=TOLERANCE
    )
    assert result.billed is False
    sub_p, sub_pay = mechanism.allocation_and_payments(rewards[1:] * 2.5, log_ref, log_q, tau)
    np.testing.assert_allclose(subset.probabilities, sub_p, rtol=0, atol=TOLERANCE)
    assert [a.id for a in subset.advertisers] == ["chordify"]
    assert subset.advertisers[0].payment == pytest.approx(float(sub_pay[0]), rel=TOLERANCE, abs=TOLERANCE)


def test_whatif_errors_and_keys(gateway: GatewayProcess, client: MosaicClient, record: AuctionRecord) -> None:
    with pytest.raises(NotFoundError):
        client.resolve("0" * 32, 1.0)
    with pytest.raises(ConflictError) as absent:  # a valid body, an advertiser this auction lacks
        client.resolve(record.auction_id, 1.0, advertisers=["chordify", "nobody"])
    assert "advertisers[1]: advertiser 'nobody' did not take part" in str(absent.value)
    with pytest.raises(ConflictError, match=r"value_scales\['ghost'\]"):
        client.resolve(record.auction_id, 1.0, value_scales={"ghost": 2.0})
    with MosaicClient(gateway.url, retries=0) as anonymous, pytest.raises(AuthenticationError):
        anonymous.resolve(record.auction_id, 1.0)
    with MosaicClient(gateway.url, api_key=STRUM_KEY, retries=0) as strum:
        mine = strum.resolve(record.auction_id, 2.0)  # she took part: allowed, as GET is
        assert isinstance(mine, SealedWhatIfResponse) and mine.tau == 2.0
        assert mine.advertiser.id == "strummaster"
        view = strum.get_auction(record.auction_id)  # her sealed view: nothing of chordify's
        assert isinstance(view, SealedAuctionRecord) and "chordify" not in view.model_dump_json()
        assert resolve_own(view, tau=2.0).advertiser.payment == pytest.approx(
            mine.advertiser.payment, rel=TOLERANCE, abs=TOLERANCE
        )
        with pytest.raises(PermissionDeniedError, match=r"value_scales\['chordify'\]"):
            strum.resolve(record.auction_id, 1.0, value_scales={"chordify": 2.0})
        with pytest.raises(PermissionDeniedError):
            strum.auction(QUERY, ADVERTISERS[:1])
    with MosaicClient(gateway.url, api_key=STRUM_KEY, retries=0) as strum:
        other = client.auction(QUERY, ADVERTISERS[1:], candidates=1, max_tokens=2, seed=3)
        with pytest.raises(NotFoundError):
            strum.resolve(other.auction_id, 1.0)


def test_client_errors_name_the_field(client: MosaicClient) -> None:
    with pytest.raises(InvalidRequestError) as error:
        client.auction(QUERY, ADVERTISERS, candidates=50)  # over MAX_CANDIDATES=3: the server's limit
    assert ["body", "candidates"] in [entry["loc"] for entry in error.value.errors]
    assert error.value.status == 422 and "candidates" in str(error.value)


def test_async_client(gateway: GatewayProcess) -> None:
    async def run() -> None:
        async with AsyncMosaicClient(gateway.url, api_key=KEY, retries=0) as mosaic:
            answer = await mosaic.auction(QUERY, ADVERTISERS, candidates=2, max_tokens=3, seed=5)
            stored = await mosaic.get_auction(answer.auction_id)
            assert isinstance(stored, AuctionRecord)
            assert stored.reply == answer.reply and stored.seed == 5
            what_if = await mosaic.resolve(answer.auction_id, 4.0)
            assert len(what_if.probabilities) == 2
            assert sum(what_if.probabilities) == pytest.approx(1.0, abs=1e-12)
            with pytest.raises(NotFoundError):
                await mosaic.get_auction("f" * 32)

    asyncio.run(run())


class _Flaky(http.server.BaseHTTPRequestHandler):
    """503 (Retry-After: 0) for the first two POSTs, then the canned answer; records the keys."""

    answer: ClassVar[bytes] = b""
    keys: ClassVar[list[str | None]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        type(self).keys.append(self.headers.get("idempotency-key"))
        if len(type(self).keys) <= 2:
            body, status = b'{"detail": "LLM workers unavailable: test"}', 503
        else:
            body, status = type(self).answer, 200
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status == 503:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_retries_resend_the_same_idempotency_key(client: MosaicClient) -> None:
    answer = client.auction(QUERY, ADVERTISERS, candidates=1, max_tokens=2, seed=9)
    _Flaky.answer = answer.model_dump_json().encode()
    _Flaky.keys = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with MosaicClient(url, retries=2, backoff_s=0.01) as flaky:
            assert flaky.auction(QUERY, ADVERTISERS).auction_id == answer.auction_id
        assert len(_Flaky.keys) == 3 and _Flaky.keys[0] and len(set(_Flaky.keys)) == 1
        _Flaky.keys = []
        with MosaicClient(url, retries=0) as no_retry, pytest.raises(UnavailableError) as error:
            no_retry.auction(QUERY, ADVERTISERS, idempotency_key="mine-1")
        assert error.value.status == 503 and _Flaky.keys == ["mine-1"]
    finally:
        server.shutdown()
        server.server_close()
    nobody = MosaicClient(f"http://127.0.0.1:{free_port()}", retries=1, backoff_s=0.01)
    with nobody, pytest.raises(TransportError):
        nobody.get_auction("a" * 32)


def test_auction_command_with_url(gateway: GatewayProcess, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            *("auction", QUERY, "-a", ADVERTISERS[0], "--url", gateway.url, "--api-key", KEY, "-m", "2"),
            *("--max-tokens", "3", "--seed", "2", "--show-candidates"),
        ],
    )
    assert result.exit_code == 0, result.output
    for text in ("reply (candidate", "strummaster", "revenue", "candidates"):
        assert text in result.output
    refused = CliRunner().invoke(cli, ["auction", QUERY, "-a", ADVERTISERS[0], "--url", gateway.url])
    assert refused.exit_code == 1 and "401" in refused.output


def test_the_readme_python_example_runs(gateway: GatewayProcess, capsys: pytest.CaptureFixture[str]) -> None:
    """README's three lines, against this gateway (its key, and M within its small limits)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    block = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(block.strip().splitlines()) == 3, block
    code = block.replace(
        'MosaicClient("http://127.0.0.1:8000")', f'MosaicClient("{gateway.url}", api_key="{KEY}")'
    )
    code = code.replace("candidates=8", "candidates=2, max_tokens=3")
    assert code != block
    exec(compile(code, "README.md", "exec"), {})
    assert "hydraskin" in capsys.readouterr().out
