"""Knowing what to bid: `mosaic calibrate` and `POST /calibration` against a real `mosaic serve`.

The gateway runs over a real tiny-random worker process and a real Redis server (API keys on).
Invariants: `mosaic calibrate --gateway` runs one TEST auction per query (one progress line each),
never bills (the billing stream is unchanged), and prints the curve that `POST /calibration` answers
on those auctions' stored candidate tables, and the value scale that meets the target (its cost
within one micro-unit per 1,000 of it); the endpoint equals `app.mechanism` recomputed from the
tables; every bad body is a 4xx naming the field (422 for the schema, 409 for tables that contradict
each other, 401 without a key), never a 5xx.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from typer.testing import CliRunner

from app import mechanism
from app.cli import cli
from tests.fixtures_gateway import GatewayProcess, start_gateway_process
from tests.fixtures_redis import RedisServerProcess
from tests.fixtures_worker import WorkerProcess

KEY = "calibrate-test-platform-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ADVERTISER = {
    "id": "strummaster",
    "name": "StrumMaster",
    "description": "selling guitars, tuners and lessons for beginners",
    "value_scale": 0.5,
}
QUERIES = [
    "Learning to play the guitar.",
    "Best skin care routine for dry skin.",
    "Starting a small business.",
]


@pytest.fixture(scope="module")
def gateway(
    tiny_worker: WorkerProcess, redis_process: RedisServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    process = start_gateway_process(
        tiny_worker.url, redis_process.url, tmp_path_factory.mktemp("calibrate-data"), API_KEYS=KEY
    )
    yield process
    process.stop()


def _table(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "tau": record["tau"],
        "value_scale": ADVERTISER["value_scale"],
        "candidates": record["candidates"],
    }


def test_mosaic_calibrate_runs_test_auctions_and_prints_the_endpoints_curve(
    gateway: GatewayProcess, redis_process: RedisServerProcess, tmp_path: Path
) -> None:
    advertiser_file = tmp_path / "advertiser.json"
    advertiser_file.write_text(json.dumps(ADVERTISER))
    queries_file = tmp_path / "queries.jsonl"
    queries_file.write_text("\n".join(json.dumps(q) for q in QUERIES))
    connection = redis.Redis.from_url(redis_process.url)
    stream_before = int(connection.xlen("mosaic:billing"))  # type: ignore[arg-type]
    result = CliRunner().invoke(
        cli,
        [
            "calibrate",
            "--advertiser-json",
            str(advertiser_file),
            "--queries",
            str(queries_file),
            "--gateway",
            gateway.url,
            "--api-key",
            KEY,
            "--target-cpm",
            "5",
            "-m",
            "3",
            "--max-tokens",
            "4",
            "--seed",
            "5",
        ],
    )
    assert result.exit_code == 0, result.output
    progress = re.findall(r"^\[(\d)/3\] .* test auction ([0-9a-f]{32}) ", result.output, flags=re.M)
    assert [index for index, _ in progress] == ["1", "2", "3"], result.output
    assert int(connection.xlen("mosaic:billing")) == stream_before  # type: ignore[arg-type]

    records = [
        httpx.get(f"{gateway.url}/auctions/{aid}", headers=AUTH, timeout=30).json() for _, aid in progress
    ]
    assert all(record["test"] is True and record["billing"] == "test" for record in records)
    answer = httpx.post(
        f"{gateway.url}/calibration",
        json={
            "advertiser": "strummaster",
            "auctions": [_table(record) for record in records],
            "value_scales": [0.5],
            "target_cpm_micro": 5_000_000,
        },
        headers=AUTH,
        timeout=60,
    ).json()
    (own,) = answer["curve"]
    assert f"{own['cost_per_1000']:.2f}" in result.output and "0.5 ◀ yours" in result.output
    target = answer["target"]  # tiny-random's ratios differ: s = 1000 costs far more than 5 per 1,000
    assert target["reached"] and target["within_one_micro"], target
    assert abs(target["cost_per_1000_micro"] - 5_000_000) <= 1
    assert f"value scale {target['value_scale']:.6g}" in result.output


def test_the_endpoint_is_the_mechanism_on_the_tables(gateway: GatewayProcess) -> None:
    """Each point equals the mean over the auctions of `mechanism.allocation_and_payments` with her
    row rescaled from the scale it ran at; the others' rows as they ran."""
    body = {
        "query": QUERIES[0],
        "advertisers": [ADVERTISER, {"id": "chordify", "name": "Chordify", "description": "online lessons"}],
        "candidates": 3,
        "max_tokens": 4,
        "seed": 9,
        "test": True,
        "include_candidates": True,
    }
    served = httpx.post(f"{gateway.url}/auction", json=body, headers=AUTH, timeout=120).json()
    scales = [0.0, 0.1, 0.5, 3.0]
    answer = httpx.post(
        f"{gateway.url}/calibration",
        json={"advertiser": "strummaster", "auctions": [_table(served)], "value_scales": scales},
        headers=AUTH,
        timeout=60,
    ).json()
    candidates = served["candidates"]
    ratio = np.array([c["rewards"]["strummaster"] for c in candidates]) / ADVERTISER["value_scale"]
    others = np.array([c["rewards"]["chordify"] for c in candidates])
    log_ref = np.array([c["log_ref"] for c in candidates])
    log_q = np.array([c["log_proposal"] for c in candidates])
    for point, s in zip(answer["curve"], scales, strict=True):
        _, payments = mechanism.allocation_and_payments(
            np.vstack([s * ratio, others]), log_ref, log_q, served["tau"]
        )
        assert point["value_scale"] == s
        assert point["cost_per_auction"] == pytest.approx(max(0.0, float(payments[0])), rel=1e-12, abs=1e-15)
    own = next(row for row in served["advertisers"] if row["id"] == "strummaster")
    assert answer["curve"][2]["cost_per_auction"] == pytest.approx(own["payment"], rel=1e-9, abs=1e-12)
    assert answer["curve"][0]["cost_per_auction"] == 0.0


BASE = {
    "advertiser": "a",
    "auctions": [
        {
            "tau": 1.0,
            "value_scale": 1.0,
            "candidates": [{"log_ref": -1.0, "log_proposal": -1.0, "rewards": {"a": 0.5}}],
        }
    ],
}


@pytest.mark.parametrize(
    ("change", "status", "named"),
    [
        ({"auctions": []}, 422, "auctions"),
        ({"value_scales": [1e4]}, 422, "value_scales"),
        ({"target_cpm_micro": 0}, 422, "target_cpm_micro"),
        ({"advertiser": "bad id!"}, 422, "advertiser"),
        ({"extra": 1}, 422, "extra"),
        ({"auctions": [{"tau": 0, "value_scale": 1.0, "candidates": []}]}, 422, "tau"),
        ({"advertiser": "b"}, 409, "auctions[0].candidates[0].rewards"),
    ],
)
def test_bad_bodies_are_4xx_naming_the_field(
    gateway: GatewayProcess, change: dict[str, Any], status: int, named: str
) -> None:
    response = httpx.post(f"{gateway.url}/calibration", json={**BASE, **change}, headers=AUTH, timeout=30)
    assert response.status_code == status, response.text
    assert named in response.text


def test_inconsistent_tables_and_no_key(gateway: GatewayProcess) -> None:
    """Candidates of one auction with different advertisers: 409 naming the candidate; no key: 401."""
    two = {"log_ref": -1.0, "log_proposal": -1.0, "rewards": {"a": 0.5, "b": 1.0}}
    one = {"log_ref": -2.0, "log_proposal": -1.0, "rewards": {"a": 0.1}}
    body = {"advertiser": "a", "auctions": [{"tau": 1.0, "value_scale": 1.0, "candidates": [two, one]}]}
    response = httpx.post(f"{gateway.url}/calibration", json=body, headers=AUTH, timeout=30)
    assert response.status_code == 409 and "auctions[0].candidates[1].rewards" in response.text
    assert httpx.post(f"{gateway.url}/calibration", json=BASE, timeout=30).status_code == 401


def test_integral_floats_are_integers(gateway: GatewayProcess) -> None:
    """JSON has one number type: a target of 5000000.0 is the integer 5000000 (the fuzzer's case)."""
    response = httpx.post(
        f"{gateway.url}/calibration", json={**BASE, "target_cpm_micro": 5_000_000.0}, headers=AUTH, timeout=30
    )
    assert response.status_code == 200, response.text
    assert response.json()["target"]["target_cpm_micro"] == 5_000_000
