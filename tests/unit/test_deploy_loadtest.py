"""The load test's traffic and checks (loadtests/traffic.py), without locust or a server."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_traffic() -> Any:
    spec = importlib.util.spec_from_file_location("load_traffic", ROOT / "loadtests" / "traffic.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


traffic = _load_traffic()


@pytest.fixture
def instances(tmp_path: Path) -> list[dict[str, Any]]:
    rows = [
        {"id": 1, "query": "Guitar?", "advertisers": [{"id": "a", "name": "A", "description": "x"}]},
        {
            "id": 2,
            "query": "Skin?",
            "advertisers": [
                {"id": "b", "name": "B", "description": "y"},
                {"id": "c", "name": "C", "description": "z"},
            ],
        },
        # the same advertiser id in another instance must never appear twice in one auction
        {"id": 3, "query": "Home?", "advertisers": [{"id": "a", "name": "A2", "description": "w"}]},
        {"id": 4, "query": "Food?", "advertisers": [{"id": "d", "name": "D", "description": "v"}]},
    ]
    path = tmp_path / "instances.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n", encoding="utf-8")
    loaded: list[dict[str, Any]] = traffic.load_instances(path)
    return loaded


def _request(rng: random.Random, instances: list[dict[str, Any]]) -> dict[str, Any]:
    request: dict[str, Any] = traffic.build_auction(
        rng, instances, candidates=4, max_tokens=32, proposals=["context", "mixture"]
    )
    return request


def test_auctions_have_one_to_four_unique_advertisers_led_by_the_instance(
    instances: list[dict[str, Any]],
) -> None:
    rng = random.Random(0)
    sizes = set()
    for _ in range(300):
        request = _request(rng, instances)
        ids = [a["id"] for a in request["advertisers"]]
        assert 1 <= len(ids) <= 4 and len(ids) == len(set(ids))
        sizes.add(len(ids))
        instance = next(i for i in instances if i["query"] == request["query"])
        own = {a["id"] for a in instance["advertisers"]}
        # the instance's own advertisers come first, padding only after all of them
        assert set(ids[: len(own)]) == own or set(ids) <= own
        assert request["candidates"] == 4 and request["max_tokens"] == 32
        assert request["proposal"] in {"context", "mixture"}
        assert 0 <= request["seed"] < 2**31
        assert set(request) == {"query", "advertisers", "candidates", "max_tokens", "proposal", "seed"}
    assert sizes == {1, 2, 3, 4}


def test_traffic_is_reproducible_from_the_seed(instances: list[dict[str, Any]]) -> None:
    first = [_request(random.Random(42), instances) for _ in range(3)]
    again = [_request(random.Random(42), instances) for _ in range(3)]
    assert first == again
    other = [_request(random.Random(43), instances) for _ in range(20)]
    assert any(request != first[0] for request in other)


def test_instances_path_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "data" / "mine.jsonl"
    target.parent.mkdir()
    target.write_text('{"query": "q", "advertisers": []}\n', encoding="utf-8")
    assert traffic.resolve_instances_path(str(target)) == target.resolve()
    monkeypatch.chdir(tmp_path)
    assert traffic.resolve_instances_path("data/mine.jsonl") == target.resolve()
    monkeypatch.setenv("MOSAIC_INSTANCES", "data/mine.jsonl")
    assert traffic.resolve_instances_path() == target.resolve()
    with pytest.raises(FileNotFoundError, match="MOSAIC_INSTANCES"):
        traffic.resolve_instances_path(str(tmp_path / "missing.jsonl"))
    # the default: ../shared/data/instances.jsonl beside the repository root
    default = (ROOT / traffic.DEFAULT_INSTANCES).resolve()
    if default.is_file():
        monkeypatch.delenv("MOSAIC_INSTANCES")
        assert traffic.resolve_instances_path() == default


def test_the_shared_instances_load_when_present() -> None:
    try:
        path = traffic.resolve_instances_path("")
    except FileNotFoundError:
        pytest.skip("shared/data/instances.jsonl not beside the repository")
    loaded = traffic.load_instances(path)
    assert loaded and all(i["query"] and i["advertisers"] for i in loaded)


def _good_response(request: dict[str, Any]) -> dict[str, Any]:
    payments = [0.125, -0.05, 0.3][: len(request["advertisers"])]
    return {
        "auction_id": "a1b2c3",
        "reply": "Try StrumMaster.",
        "chosen_index": 1,
        "tau": 1.0,
        "proposal": request["proposal"],
        "seed": 7,
        "currency": "USD",
        "advertisers": [
            {"id": a["id"], "payment": p, "expected_reward": 1.0, "expected_utility": 1.0 - p}
            for a, p in zip(request["advertisers"], payments, strict=False)
        ],
        "revenue": sum(payments),
        "effective_sample_size": 2.5,
        "timings_ms": {"tokenize": 1.0, "generate": 10.0, "total": 12.0},
    }


@pytest.fixture
def request_body() -> dict[str, Any]:
    return {
        "query": "q",
        "advertisers": [
            {"id": "a", "name": "A", "description": "x"},
            {"id": "b", "name": "B", "description": "y"},
        ],
        "candidates": 4,
        "max_tokens": 8,
        "proposal": "context",
        "seed": 1,
    }


def test_a_consistent_auction_response_passes(request_body: dict[str, Any]) -> None:
    assert traffic.check_auction_response(_good_response(request_body), request_body) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b.pop("revenue"), "missing 'revenue'"),
        (lambda b: b.update(revenue=b["revenue"] + 2e-6), "payments sum to"),
        (lambda b: b.update(chosen_index=4), "chosen_index"),
        (lambda b: b.update(chosen_index=True), "chosen_index"),
        (lambda b: b.update(effective_sample_size=0.0), "effective_sample_size"),
        (lambda b: b.update(proposal="mixture"), "proposal"),
        (lambda b: b.update(tau="1"), "tau"),
        (lambda b: b["advertisers"].pop(), "advertisers"),
        (lambda b: b["advertisers"][0].update(id="zzz"), "advertisers"),
        (lambda b: b["advertisers"][0].pop("payment"), "missing 'payment'"),
        (lambda b: b["advertisers"][0].update(payment=float("nan")), "payment"),
        (lambda b: b["timings_ms"].update(total=-1.0), "timings_ms.total"),
        (lambda b: b.update(auction_id=""), "auction_id"),
    ],
)
def test_an_inconsistent_auction_response_fails(
    request_body: dict[str, Any], change: Any, message: str
) -> None:
    body = _good_response(request_body)
    change(body)
    problems = traffic.check_auction_response(body, request_body)
    assert problems and any(message in p for p in problems), problems


def test_payments_within_the_tolerance_pass(request_body: dict[str, Any]) -> None:
    body = _good_response(request_body)
    body["revenue"] += 5e-7
    assert traffic.check_auction_response(body, request_body) == []
    assert traffic.check_auction_response([], request_body) == ["response: expected an object, got list"]


def test_ledger_checks() -> None:
    summary = {
        "currency": "USD",
        "revenue_micro": 10,
        "revenue": "0.000010",
        "events_applied": 3,
        "conflicts": 0,
        "dead_letters": 1,
        "stream_length": 3,
        "pending": 0,
    }
    assert traffic.check_ledger_summary(summary) == []
    assert traffic.check_ledger_summary(summary, {"conflicts": 0, "dead_letters": 1}) == []
    grown = traffic.check_ledger_summary({**summary, "conflicts": 1}, {"conflicts": 0, "dead_letters": 1})
    assert grown and "conflicts grew" in grown[0]
    assert traffic.check_ledger_summary({**summary, "pending": "0"})

    account = {
        "advertiser_id": "a",
        "currency": "USD",
        "balance_micro": -5,
        "paid_micro": 5,
        "auctions": 2,
        "history": [],
    }
    assert traffic.check_ledger_advertiser(account, "a") == []
    assert traffic.check_ledger_advertiser(account, "b")
    assert traffic.check_ledger_advertiser({**account, "paid_micro": -5}, "a")
    assert traffic.check_ledger_advertiser({k: v for k, v in account.items() if k != "history"}, "a")
