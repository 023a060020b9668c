"""The gateway end to end: a real worker process (tiny-random), a real Redis server, the real app.

The app runs in process (Starlette's TestClient drives its lifespan); everything it talks to is a
separate process reached over sockets.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from app.gateway.app import create_app
from app.gateway.middleware import KNOWN_METHODS
from app.settings import Settings
from tests.fixtures_redis import RedisServerProcess, start_redis_server
from tests.fixtures_worker import WorkerProcess, start_worker_process

ADVERTISERS = [
    {
        "id": "strummaster",
        "name": "StrumMaster",
        "description": "selling guitars, tuners, and learning materials",
    },
    {
        "id": "chordify",
        "name": "Chordify",
        "description": "offering online guitar lessons",
        "value_scale": 2.0,
    },
]


def auction_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "query": "Learning to play the guitar.",
        "advertisers": ADVERTISERS,
        "candidates": 6,
        "max_tokens": 12,
        "seed": 11,
        "include_candidates": True,
    }
    body.update(overrides)
    return body


@pytest.fixture(scope="module")
def worker() -> Iterator[WorkerProcess]:
    process = start_worker_process("tiny-random")
    yield process
    process.stop()


def make_settings(worker_urls: list[str], redis_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "worker_urls": worker_urls,
        "redis_url": redis_url,
        "data_dir": tmp_path,
        "log_json": False,
        "worker_timeout_s": 30,
        "billing_block_ms": 100,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def client(
    worker: WorkerProcess, redis_process: RedisServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    settings = make_settings([worker.url], redis_process.url, tmp_path_factory.mktemp("gw"))
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def recompute(record: dict[str, Any]) -> dict[str, Any]:
    """MECHANISM.md written out again, independently of app.mechanism, from the candidate table."""
    tau = record["tau"]
    ids = [advertiser["id"] for advertiser in record["advertisers"]]
    candidates = record["candidates"]
    rewards = np.array([[c["rewards"][aid] for c in candidates] for aid in ids])
    log_ref = np.array([c["log_ref"] for c in candidates])
    log_q = np.array([c["log_proposal"] for c in candidates])
    ell = rewards.sum(axis=0) / tau + log_ref - log_q

    def lse(values: np.ndarray) -> float:
        top = float(values.max())
        return top + float(np.log(np.exp(values - top).sum()))

    probabilities = np.exp(ell - lse(ell))
    expected_rewards = rewards @ probabilities
    utilities = np.array([tau * lse(ell) - tau * lse(ell - rewards[i] / tau) for i in range(len(ids))])
    return {
        "probabilities": probabilities,
        "expected_rewards": expected_rewards,
        "utilities": utilities,
        "payments": expected_rewards - utilities,
        "ess": 1.0 / float((probabilities**2).sum()),
    }


def stream_length(redis_url: str, stream: str = "mosaic:billing") -> int:
    return int(redis.Redis.from_url(redis_url).xlen(stream))


def test_auction_numbers_recompute_from_its_candidate_table(client: TestClient) -> None:
    response = client.post("/auction", json=auction_body())
    assert response.status_code == 200, response.text
    body = response.json()
    expected = recompute(body)
    got_probabilities = np.array([c["probability"] for c in body["candidates"]])
    np.testing.assert_allclose(got_probabilities, expected["probabilities"], atol=1e-6)
    by_id = {row["id"]: row for row in body["advertisers"]}
    for index, advertiser in enumerate(ADVERTISERS):
        row = by_id[advertiser["id"]]
        assert row["payment"] == pytest.approx(expected["payments"][index], abs=1e-6)
        assert row["expected_reward"] == pytest.approx(expected["expected_rewards"][index], abs=1e-6)
        assert row["expected_utility"] == pytest.approx(expected["utilities"][index], abs=1e-6)
    assert body["revenue"] == pytest.approx(float(expected["payments"].sum()), abs=1e-6)
    assert body["effective_sample_size"] == pytest.approx(expected["ess"], rel=1e-6)
    assert body["reply"] == body["candidates"][body["chosen_index"]]["text"]
    assert body["tau"] == 1.0  # the paper's default for two advertisers
    assert len(body["candidates"]) == 6
    assert set(body["timings_ms"]) == {
        "tokenize",
        "generate",
        "score",
        "mechanism",
        "billing",
        "total",
        "workers",
        "idempotency",
    }
    record = client.get(f"/auctions/{body['auction_id']}").json()
    assert record["candidates"] == body["candidates"]
    assert record["timings_ms"]["generate"] > 0 and record["timings_ms"]["score"] > 0
    for aid, row in by_id.items():
        assert abs(record["payments_micro"][aid] - row["payment"] * 1e6) <= 0.5 + 1e-6


def test_candidates_do_not_depend_on_reports(client: TestClient) -> None:
    """Same seed, different value_scale: identical candidates (MECHANISM.md, last section), and the
    scaled advertiser's rewards scale exactly."""
    scaled = client.post("/auction", json=auction_body(seed=21)).json()
    unit = [dict(ADVERTISERS[0]), {**ADVERTISERS[1], "value_scale": 1.0}]
    plain = client.post("/auction", json=auction_body(seed=21, advertisers=unit)).json()
    assert [c["text"] for c in scaled["candidates"]] == [c["text"] for c in plain["candidates"]]
    for with_scale, without in zip(scaled["candidates"], plain["candidates"], strict=True):
        assert with_scale["rewards"]["chordify"] == pytest.approx(
            2 * without["rewards"]["chordify"], abs=1e-9
        )
        assert with_scale["rewards"]["strummaster"] == pytest.approx(
            without["rewards"]["strummaster"], abs=1e-9
        )


def test_same_seed_same_auction(client: TestClient) -> None:
    first = client.post("/auction", json=auction_body(seed=1234)).json()
    second = client.post("/auction", json=auction_body(seed=1234)).json()
    assert first["auction_id"] != second["auction_id"]
    for key in ("reply", "chosen_index", "advertisers", "revenue", "effective_sample_size"):
        assert first[key] == second[key], key
    assert [c["text"] for c in first["candidates"]] == [c["text"] for c in second["candidates"]]
    other = client.post("/auction", json=auction_body(seed=99)).json()
    assert [c["text"] for c in other["candidates"]] != [c["text"] for c in first["candidates"]]


@pytest.mark.parametrize("proposal", ["reference", "mixture"])
def test_other_proposals_recompute(client: TestClient, proposal: str) -> None:
    response = client.post("/auction", json=auction_body(proposal=proposal, candidates=5))
    assert response.status_code == 200, response.text
    body = response.json()
    expected = recompute(body)
    np.testing.assert_allclose(
        [c["probability"] for c in body["candidates"]], expected["probabilities"], atol=1e-6
    )
    sources = [c["proposal"] for c in body["candidates"]]
    if proposal == "reference":
        assert set(sources) == {"reference"}
    else:
        assert sources.count("context") == 3 and sources.count("reference") == 2  # round(0.5 · 5) = 3


def test_reference_proposal_weights_are_exact(client: TestClient) -> None:
    """proposal=reference at temperature 1 / top-p 1: q = π_ref, so log π_ref − log q must be 0 for
    every candidate (issue 17: bf16 decoding and scoring share one arithmetic; before, ±1 nat)."""
    request = auction_body(proposal="reference", candidates=8, max_tokens=40)
    body = client.post("/auction", json=request).json()
    gaps = [abs(c["log_ref"] - c["log_proposal"]) for c in body["candidates"]]
    assert len(gaps) == 8 and max(gaps) <= 1e-3, gaps


def test_processed_logprobs_are_the_proposal_density(client: TestClient) -> None:
    """At temperature 0.7 / top-p 0.9, log q is the processed log-prob, not the raw score."""
    body = client.post("/auction", json=auction_body(temperature=0.7, top_p=0.9, proposal="reference")).json()
    # Under the reference proposal the raw score log π_ref differs from the processed log q.
    gaps = [abs(c["log_ref"] - c["log_proposal"]) for c in body["candidates"]]
    assert max(gaps) > 1e-3
    np.testing.assert_allclose(
        [c["probability"] for c in body["candidates"]], recompute(body)["probabilities"], atol=1e-6
    )


def test_billing_event_and_ledger(client: TestClient, redis_process: RedisServerProcess) -> None:
    before = stream_length(redis_process.url)
    body = client.post("/auction", json=auction_body(seed=5)).json()
    assert stream_length(redis_process.url) == before + 1
    deadline = time.time() + 10
    while time.time() < deadline:
        account = client.get("/ledger/advertisers/chordify").json()
        history = json.dumps(account)
        if body["auction_id"] in history:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the embedded ledger consumer did not apply the auction")
    summary = client.get("/ledger/summary")
    assert summary.status_code == 200


def test_unknown_auction_is_404(client: TestClient) -> None:
    assert client.get("/auctions/" + "0" * 32).status_code == 404
    assert client.get("/auctions/not-a-valid-id!").status_code == 404


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"query": "x" * 2001}, ["body", "query"]),
        ({"candidates": 65}, ["body", "candidates"]),
        ({"max_tokens": 513}, ["body", "max_tokens"]),
        ({"advertisers": []}, ["body", "advertisers"]),
        ({"campaigns": [f"c{i}" for i in range(16)]}, ["body", "campaigns"]),
        ({"campaigns": ["c1", "c1"]}, ["body", "campaigns"]),
        ({"campaigns": ["bad id!"]}, ["body", "campaigns", 0]),
        ({"advertisers": [ADVERTISERS[0], ADVERTISERS[0]]}, ["body", "advertisers"]),
        (
            {"advertisers": [{**ADVERTISERS[0], "description": "d" * 501}]},
            ["body", "advertisers", 0, "description"],
        ),
        ({"advertisers": [{**ADVERTISERS[0], "id": "bad id!"}]}, ["body", "advertisers", 0, "id"]),
        ({"advertisers": [{**ADVERTISERS[0], "value_scale": -1}]}, ["body", "advertisers", 0, "value_scale"]),
        ({"tau": 0}, ["body", "tau"]),
        ({"proposal": "greedy"}, ["body", "proposal"]),
        ({"proposal": "mixture", "temperature": 0.5}, ["body"]),
        ({"unknown_field": 1}, ["body", "unknown_field"]),
    ],
)
def test_bad_input_is_422_naming_the_field(
    client: TestClient, redis_process: RedisServerProcess, overrides: dict[str, Any], field: list[Any]
) -> None:
    before = stream_length(redis_process.url)
    response = client.post("/auction", json=auction_body(**overrides))
    assert response.status_code == 422, response.text
    locations = [error["loc"] for error in response.json()["detail"]]
    assert any(location[: len(field)] == field for location in locations), locations
    assert stream_length(redis_process.url) == before


def test_body_over_the_limit_is_413(client: TestClient, redis_process: RedisServerProcess) -> None:
    """Declared (Content-Length) and undeclared (chunked) bodies over MAX_BODY_BYTES: 413, nothing billed."""
    before = stream_length(redis_process.url)
    oversized = b'{"query": "' + b"x" * 70_000 + b'"}'

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(oversized), 8192):
            yield oversized[start : start + 8192]

    for content in (oversized, chunks()):
        response = client.post("/auction", content=content, headers={"content-type": "application/json"})
        assert response.status_code == 413, response.text
        assert response.json()["detail"][0]["loc"] == ["body"]
        assert "MAX_BODY_BYTES" in response.json()["detail"][0]["msg"]
    assert stream_length(redis_process.url) == before


def test_api_keys(worker: WorkerProcess, redis_process: RedisServerProcess, tmp_path: Path) -> None:
    settings = make_settings([worker.url], redis_process.url, tmp_path, api_keys=["s3cret"])
    with TestClient(create_app(settings)) as keyed:
        assert keyed.get("/healthz").status_code == 200
        for method, path in (
            ("post", "/auction"),
            ("get", "/auctions/abc"),
            ("get", "/metrics"),
            ("get", "/ledger/summary"),
            ("get", "/ledger/advertisers/chordify"),
        ):
            assert getattr(keyed, method)(path).status_code == 401, path
            wrong = getattr(keyed, method)(path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401, path
        ok = keyed.post(
            "/auction", json=auction_body(candidates=2), headers={"Authorization": "Bearer s3cret"}
        )
        assert ok.status_code == 200, ok.text


def test_readyz_and_metrics(client: TestClient) -> None:
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["redis"] is True
    text = client.get("/metrics").text
    for name in (
        "mosaic_auction_stage_seconds",
        "mosaic_auction_candidates",
        "mosaic_auction_effective_sample_size",
        "mosaic_revenue_cumulative",
        "mosaic_http_request_duration_seconds",
        "mosaic_billing_pending",
    ):
        assert name in text, name


def _request_series(client: TestClient) -> set[tuple[str, str, str]]:
    """The (method, route, status) label sets of mosaic_http_request_duration_seconds in /metrics."""
    series = set()
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("mosaic_http_request_duration_seconds_count{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            series.add((labels["method"], labels["route"], labels["status"]))
    return series


def _templates(routes: list[Any], prefix: str = "") -> set[str]:
    """Every route template of the app, included routers' and mounts' too."""
    found: set[str] = set()
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            found |= _templates(inner.routes, prefix)
            continue
        found.add(prefix + route.path)
        found |= _templates(getattr(route, "routes", []), prefix + route.path)
    return found


def test_request_metric_labels_stay_bounded(client: TestClient) -> None:
    """Invariant: whatever methods and paths clients send, the request metric's `method` label is one of
    RFC 9110's methods or `other` and its `route` label a route template or `unmatched`: 35 odd methods
    x 9 paths (each unknown path new) add a handful of series, not one per combination (5,056 before)."""
    templates = _templates(client.app.routes)  # type: ignore[attr-defined]
    before = _request_series(client)
    methods = [f"X-{index}" for index in range(30)] + ["PROPFIND", "MKCOL", "PURGE", "LOCK", "get"]
    for method in methods:
        for path in ("/healthz", "/readyz", "/auction", "/auctions/abc", "/metrics", "/ledger/summary"):
            client.request(method, path)
        for path in (f"/nope-{method}", f"/auctions/abc/{method}", "/auction/"):
            client.request(method, path, follow_redirects=False)
    after = _request_series(client)
    assert {method for method, _, _ in after} <= {*KNOWN_METHODS, "other"}, after
    assert {route for _, route, _ in after} <= {*templates, "unmatched"}, after
    assert len(after - before) <= 20, sorted(after - before)


def test_trailing_slash_redirect_is_never_built_from_host(client: TestClient) -> None:
    """Invariant: a redirect's Location is a path on this server, whatever the Host header says: the
    route without (or with) its trailing slash and the query, never a scheme or a host; a path that
    would redirect off-site (`//evil.example/`) is a plain 404."""
    evil = {"Host": "evil.example"}
    for method, path, location in (
        ("POST", "/auction/", "/auction"),
        ("GET", "/healthz/?verbose=1", "/healthz?verbose=1"),
        ("GET", "/auctions/abc/", "/auctions/abc"),
        ("GET", "/docs/", "/docs"),
    ):
        answer = client.request(method, path, headers=evil, follow_redirects=False)
        assert answer.status_code == 307, (path, answer.status_code)
        assert answer.headers["location"] == location, answer.headers["location"]
    for path in ("//evil.example/", "//evil.example", "/%2F%2Fevil.example/"):
        answer = client.get(f"http://testserver{path}", headers=evil, follow_redirects=False)
        assert answer.status_code == 404 and "location" not in answer.headers, path


def test_worker_down_is_503_and_nothing_billed(redis_process: RedisServerProcess, tmp_path: Path) -> None:
    doomed = start_worker_process("tiny-random")
    settings = make_settings([doomed.url], redis_process.url, tmp_path, worker_connect_timeout_s=1.0)
    with TestClient(create_app(settings)) as gateway:
        assert gateway.post("/auction", json=auction_body(candidates=2)).status_code == 200
        doomed.kill()
        before = stream_length(redis_process.url)
        response = gateway.post("/auction", json=auction_body(candidates=2))
        assert response.status_code == 503, response.text
        assert "workers unavailable" in response.json()["detail"]
        assert stream_length(redis_process.url) == before
        assert gateway.get("/readyz").status_code == 503


def test_failed_worker_is_retried_on_another(
    worker: WorkerProcess, redis_process: RedisServerProcess, tmp_path: Path
) -> None:
    doomed = start_worker_process("tiny-random")
    settings = make_settings(
        [doomed.url, worker.url], redis_process.url, tmp_path, worker_connect_timeout_s=1.0
    )
    with TestClient(create_app(settings)) as gateway:
        doomed.kill()
        response = gateway.post("/auction", json=auction_body(candidates=4))
        assert response.status_code == 200, response.text
        assert "mosaic_worker_errors_total" in gateway.get("/metrics").text


def test_two_workers_share_generation_and_scoring(
    worker: WorkerProcess, tiny_worker: WorkerProcess, redis_process: RedisServerProcess, tmp_path: Path
) -> None:
    settings = make_settings([worker.url, tiny_worker.url], redis_process.url, tmp_path)
    with TestClient(create_app(settings)) as gateway:
        body = gateway.post("/auction", json=auction_body(candidates=5, proposal="mixture")).json()
        np.testing.assert_allclose(
            [c["probability"] for c in body["candidates"]], recompute(body)["probabilities"], atol=1e-6
        )
        again = gateway.post("/auction", json=auction_body(candidates=5, proposal="mixture")).json()
        assert [c["text"] for c in again["candidates"]] == [c["text"] for c in body["candidates"]]


def test_deadline_is_504_and_nothing_billed(
    worker: WorkerProcess, redis_process: RedisServerProcess, tmp_path: Path
) -> None:
    settings = make_settings([worker.url], redis_process.url, tmp_path, auction_deadline_s=0.05)
    with TestClient(create_app(settings)) as gateway:
        before = stream_length(redis_process.url)
        response = gateway.post("/auction", json=auction_body(candidates=8, max_tokens=64))
        assert response.status_code == 504, response.text
        assert "AUCTION_DEADLINE_S" in response.json()["detail"]
        assert stream_length(redis_process.url) == before


def test_billing_down_is_503_and_no_reply(worker: WorkerProcess, tmp_path: Path) -> None:
    doomed_redis = start_redis_server(tmp_path / "doomed")
    settings = make_settings([worker.url], doomed_redis.url, tmp_path, billing_embedded_consumer=False)
    try:
        with TestClient(create_app(settings)) as gateway:
            assert gateway.post("/auction", json=auction_body(candidates=2)).status_code == 200
            doomed_redis.kill()
            response = gateway.post("/auction", json=auction_body(candidates=2))
            assert response.status_code == 503, response.text
            assert "reply" not in response.json()
            assert "billing" in response.json()["detail"]
    finally:
        doomed_redis.stop()
