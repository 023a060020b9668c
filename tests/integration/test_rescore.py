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
import copy
import json
import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.auction.engine_identity import EngineIdentities, identity_digest
from app.verification.rescore import rescore_checks
from tests.fixtures_gateway import GatewayProcess, start_gateway_process
from tests.fixtures_redis import RedisServerProcess
from tests.fixtures_worker import WorkerProcess, free_port, running_worker, start_worker_process

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
    with running_worker("tiny-random", env={"WORKER_TORCH_THREADS": "1"}) as worker:
        yield worker


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


@pytest.fixture(scope="module")
def worker_b() -> Iterator[WorkerProcess]:
    """Same build and threads as A, other batching: continuous batching off, tiny batch budgets."""
    env = {
        "WORKER_TORCH_THREADS": "1",
        "WORKER_BATCHING": "false",
        "WORKER_SCORE_TOKEN_BUDGET": "64",
        "WORKER_BATCH_TOKEN_BUDGET": "64",
        "WORKER_BATCH_MAX_ROWS": "1",
    }
    worker = start_worker_process("tiny-random", env=env)
    try:
        yield worker
    finally:
        worker.stop()


def test_another_process_with_other_batching_rescores_bit_for_bit(
    records: dict[str, dict[str, Any]], worker_b: WorkerProcess
) -> None:
    """Batching settings change no bits on the batch-invariant path, so they are not part of the
    identity: worker B is the same engine, and every log-prob agrees bit for bit."""
    for record in records.values():
        checks = _rescore(record, worker_b.url)
        _all_pass(checks)
        assert "same engine identity: bit for bit" in checks["rescore.mode"].detail


# Other engines of the same model and build: what differs from A, and the tolerance they must meet.
OTHER_ENGINES = {
    "threads-2": ({"WORKER_TORCH_THREADS": "2"}, "kernels.threads: 1 ≠ 2"),
    "fp32": ({"WORKER_TORCH_THREADS": "1", "WORKER_DTYPE": "float32"}, "dtype: 'bfloat16' ≠ 'float32'"),
}


@pytest.mark.parametrize("config", sorted(OTHER_ENGINES))
def test_another_engine_is_named_and_agrees_within_the_tolerance(
    records: dict[str, dict[str, Any]], config: str
) -> None:
    """A worker with 2 torch threads, or fp32 weights, is another identity: `rescore.mode` names what
    differs and the tolerance; every log-prob agrees within it (max |diff| printed: the measurement
    of docs/DESIGN.md § Verifiable auctions)."""
    env, named = OTHER_ENGINES[config]
    other = start_worker_process("tiny-random", env=env)
    try:
        for proposal, record in records.items():
            checks = _rescore(record, other.url)
            _all_pass(checks)
            assert "another engine identity" in checks["rescore.mode"].detail
            assert named in checks["rescore.mode"].detail, checks["rescore.mode"].detail
            for name in ("rescore.log_ref", "rescore.log_context", "rescore.log_proposal"):
                print(config, proposal, name, checks[name].detail)
    finally:
        other.stop()


def _tampered(record: dict[str, Any], path: tuple[Any, ...], change: Any) -> dict[str, Any]:
    copy_ = copy.deepcopy(record)
    target = copy_
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = change(target[path[-1]])
    return copy_


@pytest.mark.parametrize(
    ("path", "change", "name", "named"),
    [
        (
            ("candidates", 2, "log_context", "bravo"),
            lambda v: v + 1e-12,
            "rescore.log_context",
            "candidate 2 log_context['bravo']",
        ),
        (
            ("candidates", 0, "log_ref"),
            lambda v: math.nextafter(v, 0.0),
            "rescore.log_ref",
            "candidate 0 log_ref",
        ),
        (
            ("candidates", 1, "log_proposal"),
            lambda v: v - 1e-9,
            "rescore.log_proposal",
            "candidate 1 log_proposal",
        ),
        (
            ("candidates", 3, "token_ids"),
            lambda ids: [*ids[:-1], (ids[-1] + 1) % 1000],
            "rescore.draws",
            "candidate 3 token_ids",
        ),
    ],
)
def test_a_tampered_record_fails_naming_the_candidate_and_field(
    records: dict[str, dict[str, Any]],
    worker_a: WorkerProcess,
    path: tuple[Any, ...],
    change: Any,
    name: str,
    named: str,
) -> None:
    """One changed log-prob (by as little as one ulp) or token fails its check, naming it."""
    record = _tampered(records["mixture"], path, change)
    assert record != records["mixture"]
    checks = _rescore(record, worker_a.url)
    assert not checks[name].ok, checks[name]
    assert named in checks[name].detail, checks[name].detail


def test_a_record_of_other_weights_fails_naming_the_field(
    records: dict[str, dict[str, Any]], worker_a: WorkerProcess
) -> None:
    """The worker must be the announced model: a record whose weights hash is not the worker's fails
    `rescore.engine` naming `weights_sha256`, before anything is scored."""
    path = ("engine", "identities", 0, "identity", "weights_sha256")
    record = _tampered(records["reference"], path, lambda _: "0" * 64)
    checks = _rescore(record, worker_a.url)
    assert list(checks) == ["rescore.engine"]
    assert not checks["rescore.engine"].ok
    assert "engine.identities[0].identity.weights_sha256" in checks["rescore.engine"].detail


def test_a_worker_of_another_model_fails_naming_model(records: dict[str, dict[str, Any]]) -> None:
    """A SmolLM2 worker is not the recorded tiny-random: `rescore.engine` fails naming `model`."""
    other = start_worker_process("smollm2", env={"WORKER_TORCH_THREADS": "1"})
    try:
        checks = _rescore(records["reference"], other.url)
    finally:
        other.stop()
    assert not checks["rescore.engine"].ok
    detail = checks["rescore.engine"].detail
    assert "engine.identities[0].identity.model" in detail and "'smollm2'" in detail, detail


def test_her_sealed_view_rescores_what_it_holds(
    gateway: GatewayProcess, records: dict[str, dict[str, Any]], worker_a: WorkerProcess
) -> None:
    """Her sealed view re-scores log π_ref, her own log π_i and the reference draws bit for bit; a
    mixture's log q needs the sealed context prompt and says so; the others' log_context never shows."""
    view = _record(gateway, records["mixture"]["auction_id"], ALPHA_KEY)
    assert view["view"] == "sealed"
    assert all(set(c["log_context"]) == {"alpha"} for c in view["candidates"])
    checks = _rescore(view, worker_a.url)
    _all_pass(checks)
    assert "5 values agree bit for bit" in checks["rescore.log_context"].detail
    assert "sealed context prompt" in checks["rescore.log_proposal"].detail
    assert "bit for bit" in checks["rescore.log_ref"].detail
    tampered = _tampered(view, ("candidates", 4, "log_context", "alpha"), lambda v: v + 1e-9)
    failed = _rescore(tampered, worker_a.url)["rescore.log_context"]
    assert not failed.ok and "candidate 4 log_context['alpha']" in failed.detail


def _compact(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def test_what_rescoring_adds_to_a_record_stays_small(records: dict[str, dict[str, Any]]) -> None:
    """The bytes issue 35 adds to a stored record (compact JSON): `engine` under 1.5 KB whatever the
    auction's size (one identity, a few requests), each log_context entry under 40 bytes, each token
    id under 8 bytes (printed: the figures of docs/DESIGN.md § Verifiable auctions)."""
    for proposal, record in records.items():
        candidates = record["candidates"]
        engine = _compact({"engine": record["engine"]})
        log_context = sum(_compact({"log_context": c["log_context"]}) for c in candidates)
        token_ids = sum(_compact({"token_ids": c["token_ids"]}) for c in candidates)
        tokens = sum(len(c["token_ids"]) for c in candidates)
        entries = sum(len(c["log_context"]) for c in candidates)
        total = _compact(record)
        print(
            f"{proposal}: record {total} B; engine {engine} B, log_context {log_context} B "
            f"({entries} entries), token_ids {token_ids} B ({tokens} tokens)"
        )
        assert engine < 1500
        assert log_context < 40 * entries
        assert token_ids < 8 * tokens + 16 * len(candidates)


def test_two_engines_in_one_auction_are_recorded_and_each_compared_by_its_rule(
    worker_a: WorkerProcess, redis_process: RedisServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A gateway over A and a 2-thread worker (another identity): the record names both engines and
    which generation shares and scoring requests each answered; re-scored on A, what A produced agrees
    bit for bit and what the other produced within the tolerance, and `rescore.mode` names the field."""
    other = start_worker_process("tiny-random", env={"WORKER_TORCH_THREADS": "2"})
    gateway = start_gateway_process(
        f"{worker_a.url},{other.url}",
        redis_process.url,
        tmp_path_factory.mktemp("rescore-two"),
        API_KEYS=PLATFORM_KEY,
        WORKER_HEDGE="false",
        **LIMITS,
    )
    try:
        record = _record(gateway, _auction(gateway, "mixture", 29))
    finally:
        gateway.stop()
        other.stop()
    engine = record["engine"]
    assert len(engine["identities"]) == 2
    threads = {entry["identity"]["kernels"]["threads"] for entry in engine["identities"]}
    assert threads == {1, 2}
    assert {k for k, *_ in engine["generated"]} == {0, 1} and {k for k, *_ in engine["scored"]} == {0, 1}
    checks = _rescore(record, worker_a.url)
    _all_pass(checks)
    assert "kernels.threads: 2 ≠ 1" in checks["rescore.mode"].detail
    detail = checks["rescore.log_context"].detail
    assert " bit for bit, " in detail and "within" in detail, detail


def test_the_gateway_reads_each_engine_identity_once_and_flags_a_changed_one(worker_a: WorkerProcess) -> None:
    """An answer's X-Mosaic-Engine is the digest of the worker's GET /version identity, read once and
        kept; read without the header (as for a stock vLLM) the worker gets the same id; a header that is
        not the worker's identity now (restarted as another engine) is recorded as unread, never kept as
    read (read again after UNREAD_RETRY_S)."""

    async def run() -> None:
        identities = EngineIdentities()
        reads: list[str] = []

        async def count(request: httpx.Request) -> None:
            reads.extend([request.url.path] if request.url.path == "/version" else [])

        async with httpx.AsyncClient(base_url=worker_a.url, event_hooks={"request": [count]}) as client:
            header = (await client.get("/v1/models")).headers["X-Mosaic-Engine"]
            version = (await client.get("/version")).json()
            assert await identities.engine_id(client, header) == header
            assert await identities.engine_id(client, header) == header and len(reads) == 2  # kept
            assert identities.known[header] == version["mosaic_engine"]
            assert identity_digest(version["mosaic_engine"]) == header
            assert await identities.engine_id(client, None) == header
            stale = "0" * 64
            assert await identities.engine_id(client, stale) == stale
            assert "unread" in identities.known[stale]
            assert stale not in identities._ids  # read again later, not on every answer
            before = len(reads)
            assert await identities.engine_id(client, stale) == stale and len(reads) == before

    asyncio.run(run())


def test_no_worker_at_the_url_fails_naming_it(records: dict[str, dict[str, Any]]) -> None:
    """Nothing listening at the URL: `rescore.engine` fails saying the identity could not be read
    (a verify run reports it, never crashes)."""
    checks = _rescore(records["reference"], f"http://127.0.0.1:{free_port()}")
    assert list(checks) == ["rescore.engine"] and not checks["rescore.engine"].ok
    assert "GET /version: ConnectError" in checks["rescore.engine"].detail


def test_an_fp32_auction_replays_the_gateways_batches_bit_for_bit(
    redis_process: RedisServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """On the fp32 transformers path a row's bits depend on its batch (to float noise): the full
    record's re-score sends the gateway's exact scoring requests again (`engine.scored`) and agrees
    bit for bit; her sealed view cannot (the batches hold the others' prompts), so her rows compare
    within the fp32 tolerance, and the mode of each says so."""
    worker = start_worker_process("tiny-random", env={"WORKER_TORCH_THREADS": "1", "WORKER_DTYPE": "float32"})
    gateway = start_gateway_process(
        worker.url,
        redis_process.url,
        tmp_path_factory.mktemp("rescore-fp32"),
        API_KEYS=PLATFORM_KEY,
        ADVERTISER_API_KEYS=json.dumps({"alpha": [ALPHA_KEY]}),
        **LIMITS,
    )
    try:
        auction_id = _auction(gateway, "mixture", 41)
        record, view = _record(gateway, auction_id), _record(gateway, auction_id, ALPHA_KEY)
        assert record["engine"]["identities"][0]["identity"]["kernels"]["path"] == "transformers"
        full, sealed = _rescore(record, worker.url), _rescore(view, worker.url)
    finally:
        gateway.stop()
        worker.stop()
    _all_pass(full)
    _all_pass(sealed)
    assert "5 values agree bit for bit" in full["rescore.log_ref"].detail
    assert "15 values agree bit for bit" in full["rescore.log_context"].detail
    assert "bit for bit" in full["rescore.log_proposal"].detail
    assert "5 values agree within 0.0001 nats per token" in sealed["rescore.log_context"].detail
    print(sealed["rescore.log_context"].detail)
