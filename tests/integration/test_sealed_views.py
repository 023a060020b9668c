"""Sealed advertiser views: every route × every key kind, against real `mosaic serve` processes.

Two gateways over one real tiny-random worker process and one real Redis server: one with keys (a
platform key; advertiser keys for `alpha7`, who takes part, and `gamma7`, who does not) and one with
auth off. Auctions: alpha7 + bravo7 + charlie7 (three, so the others' summed rewards differ from each
one's), and alpha7 + bravo7 (two: the sum IS bravo7's reward vector, the disclosure DESIGN.md states).

Invariants: an advertiser key reads of an auction it took part in only its sealed view — no other
advertiser's id, name, description, instruction, value scale, payment, reward, nor the revenue,
anywhere in the answer (the reply and the candidates' texts are hers to read and excepted from the
string check) — and her payment recomputed from that view alone (`resolve_own`) equals the stored one
to 1e-12; her what-if may change only τ and her own value scale, and naming any other advertiser is 403
naming the field whether that advertiser took part or not (no oracle); an auction she was not in is
404; a platform key and auth off keep the full record; no key with auth on is 401 wherever a key is
needed; the explorer's assets carry no auction data. The route table is `CASES`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jsonschema
import pytest

from mosaic_client import MosaicClient, SealedAuctionRecord, resolve_own
from tests.fixtures_gateway import GatewayProcess, start_gateway_process
from tests.fixtures_redis import RedisServerProcess
from tests.fixtures_worker import WorkerProcess
from tests.sealed_checks import assert_nothing_of_the_others

PLATFORM_KEY = "sealed-test-platform-key"
ALPHA_KEY = "sealed-test-alpha-key"
GAMMA_KEY = "sealed-test-gamma-key"
TOLERANCE = 1e-12

ALPHA = {
    "id": "alpha7",
    "name": "Alphaqz",
    "description": "alpha-own-description",
    "instruction": "ALPHA-OWN-INSTRUCTION: mention Alphaqz.",
    "value_scale": 0.015,
}
BRAVO = {
    "id": "bravo7",
    "name": "Bravoqz",
    "description": "bravo-secret-description",
    "instruction": "BRAVO-SECRET-INSTRUCTION: mention Bravoqz.",
    "value_scale": 0.0725,
}
CHARLIE = {
    "id": "charlie7",
    "name": "Charlieqz",
    "description": "charlie-secret-description",
    "instruction": "CHARLIE-SECRET-INSTRUCTION: mention Charlieqz.",
    "value_scale": 0.0375,
}
OTHERS = (BRAVO, CHARLIE)
QUERY = "Learning to play the guitar."


@pytest.fixture(scope="module")
def gateways(
    tiny_worker: WorkerProcess, redis_process: RedisServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, GatewayProcess]]:
    keyed = start_gateway_process(
        tiny_worker.url,
        redis_process.url,
        tmp_path_factory.mktemp("sealed-keyed"),
        API_KEYS=PLATFORM_KEY,
        ADVERTISER_API_KEYS=json.dumps({"alpha7": [ALPHA_KEY], "gamma7": [GAMMA_KEY]}),
        BILLING_EMBEDDED_LINGER_MS="0",
    )
    try:
        open_ = start_gateway_process(
            tiny_worker.url, redis_process.url, tmp_path_factory.mktemp("sealed-open"), API_KEYS=""
        )
    except Exception:
        keyed.stop()
        raise
    yield {"keyed": keyed, "open": open_}
    open_.stop()
    keyed.stop()


KEYS: dict[str, tuple[str, dict[str, str]]] = {
    "platform": ("keyed", {"Authorization": f"Bearer {PLATFORM_KEY}"}),
    "participant": ("keyed", {"Authorization": f"Bearer {ALPHA_KEY}"}),
    "non-participant": ("keyed", {"Authorization": f"Bearer {GAMMA_KEY}"}),
    "no key": ("keyed", {}),
    "auth off": ("open", {}),
}


@pytest.fixture(scope="module")
def auctions(gateways: dict[str, GatewayProcess]) -> dict[str, dict[str, Any]]:
    """The full records (platform view) of the three- and the two-advertiser auction."""
    headers = KEYS["platform"][1]
    records = {}
    for name, advertisers in (("A3", [ALPHA, BRAVO, CHARLIE]), ("A2", [ALPHA, BRAVO])):
        body = {"query": QUERY, "advertisers": advertisers, "candidates": 3, "max_tokens": 4, "seed": 21}
        served = httpx.post(f"{gateways['keyed'].url}/auction", json=body, headers=headers, timeout=120)
        assert served.status_code == 200, served.text
        auction_id = served.json()["auction_id"]
        stored = httpx.get(f"{gateways['keyed'].url}/auctions/{auction_id}", headers=headers, timeout=30)
        records[name] = stored.json()
        # small value scales: no degenerate allocation, so every figure is its own (the leak checks bite)
        assert all(row["payment"] != 0.0 for row in records[name]["advertisers"]), records[name]
    return records


# ---------------------------------------------------------------- what a sealed answer may hold


def assert_sealed(body: dict[str, Any], full: dict[str, Any]) -> None:
    """Nothing of another advertiser in `body` (alpha7's answer about the auction `full`)."""
    assert_nothing_of_the_others(body, full, ALPHA["id"])


def _alpha_row(answer: dict[str, Any]) -> dict[str, Any]:
    return next(row for row in answer["advertisers"] if row["id"] == ALPHA["id"])


# ---------------------------------------------------------------- checks per case

Check = Callable[[httpx.Response, dict[str, dict[str, Any]], dict[str, GatewayProcess]], None]


def full_record(response: httpx.Response, records: dict[str, dict[str, Any]], _: Any) -> None:
    body = response.json()
    assert body == records["A3"] | {"billing": body["billing"]}
    assert [entry["instruction"] for entry in body["request"]["advertisers"]][1] == BRAVO["instruction"]


def sealed_record(response: httpx.Response, records: dict[str, dict[str, Any]], _: Any) -> None:
    body = response.json()
    full = records["A3"]
    assert_sealed(body, full)
    view = SealedAuctionRecord.model_validate(body)
    assert view.request.advertiser.model_dump(exclude_none=True) == ALPHA
    assert view.advertiser.model_dump() == _alpha_row(full)
    assert view.payment_micro == full["payments_micro"][ALPHA["id"]]
    mine = resolve_own(view)  # her payment from the view alone
    for figure in ("payment", "expected_reward", "expected_utility"):
        assert getattr(mine.advertiser, figure) == pytest.approx(
            _alpha_row(full)[figure], rel=0, abs=TOLERANCE
        )
    for shown, stored in zip(view.candidates, full["candidates"], strict=True):
        assert shown.reward == stored["rewards"][ALPHA["id"]] and shown.text == stored["text"]
        assert shown.probability == stored["probability"] and shown.log_ref == stored["log_ref"]


def full_whatif(response: httpx.Response, _: Any, __: Any) -> None:
    body = response.json()
    assert [row["id"] for row in body["advertisers"]] == ["alpha7", "bravo7", "charlie7"]


def _platform_whatif(
    gateways: dict[str, GatewayProcess], auction_id: str, body: dict[str, Any]
) -> dict[str, Any]:
    url = f"{gateways['keyed'].url}/auctions/{auction_id}/resolve"
    answer = httpx.post(url, json=body, headers=KEYS["platform"][1], timeout=30)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def sealed_whatif(body: dict[str, Any]) -> Check:
    """Her what-if: sealed, and her figures equal the platform's what-if for the same body to 1e-12."""

    def check(response: httpx.Response, records: dict[str, dict[str, Any]], gateways: Any) -> None:
        answer = response.json()
        assert_sealed(answer, records["A3"])
        full = _platform_whatif(gateways, records["A3"]["auction_id"], body)
        for figure in ("payment", "expected_reward", "expected_utility"):
            assert answer["advertiser"][figure] == pytest.approx(
                _alpha_row(full)[figure], rel=0, abs=TOLERANCE
            )
        assert answer["probabilities"] == pytest.approx(full["probabilities"], rel=0, abs=TOLERANCE)
        assert answer["tau"] == body["tau"] and answer["billed"] is False

    return check


def names(*fields: str) -> Check:
    def check(response: httpx.Response, _: Any, __: Any) -> None:
        detail = response.json()["detail"]
        assert all(field in detail for field in fields), detail
        assert "did not take part" not in detail  # the same answer for an id that took part or not

    return check


def no_auction_data(response: httpx.Response, records: dict[str, dict[str, Any]], _: Any) -> None:
    for record in records.values():
        assert record["auction_id"] not in response.text
    for entry in OTHERS:
        assert entry["instruction"] not in response.text


def own_history(response: httpx.Response, _: Any, __: Any) -> None:
    body = response.json()
    assert body["advertiser_id"] == ALPHA["id"]
    for entry in body["history"]:
        assert set(entry) == {"auction_id", "stream_id", "created_at_ms", "payment_micro", "payment"}


def ok(response: httpx.Response, _: Any, __: Any) -> None:
    pass


@dataclass(frozen=True)
class Case:
    method: str
    path: str  # {A3}: the three-advertiser auction's id
    statuses: dict[str, int]  # key kind → status
    body: dict[str, Any] | None = None
    checks: tuple[tuple[str, Check], ...] = ()  # (key kind, check of its answer)


def everyone(status: int) -> dict[str, int]:
    return dict.fromkeys(KEYS, status)


def keyed(platform: int, participant: int, non_participant: int, open_: int | None = None) -> dict[str, int]:
    return {
        "platform": platform,
        "participant": participant,
        "non-participant": non_participant,
        "no key": 401,
        "auth off": platform if open_ is None else open_,
    }


PLATFORM_ONLY = keyed(200, 403, 403)
AUCTION = {"query": QUERY, "advertisers": [ALPHA], "candidates": 1, "max_tokens": 1, "seed": 1}
OWN_SCALE = {"tau": 0.7, "value_scales": {"alpha7": 3.0}}
ALONE = {"tau": 1.0, "advertisers": ["alpha7"]}

CASES = [
    Case(
        "GET",
        "/auctions/{A3}",
        keyed(200, 200, 404),
        None,
        (("platform", full_record), ("auth off", full_record), ("participant", sealed_record)),
    ),
    Case(
        "POST",
        "/auctions/{A3}/resolve",
        keyed(200, 200, 404),
        {"tau": 2.0},
        (("platform", full_whatif), ("auth off", full_whatif), ("participant", sealed_whatif({"tau": 2.0}))),
    ),
    Case(
        "POST",
        "/auctions/{A3}/resolve",
        keyed(200, 200, 404),
        OWN_SCALE,
        (("participant", sealed_whatif(OWN_SCALE)),),
    ),
    Case(
        "POST",
        "/auctions/{A3}/resolve",
        keyed(200, 200, 404),
        ALONE,
        (("participant", sealed_whatif(ALONE)),),
    ),
    Case(
        "POST",
        "/auctions/{A3}/resolve",
        keyed(200, 403, 404),
        {"tau": 1.0, "value_scales": {"bravo7": 2.0}},
        (("participant", names("value_scales['bravo7']", "its own value scale")),),
    ),
    Case(
        "POST",
        "/auctions/{A3}/resolve",
        keyed(409, 403, 404),
        {"tau": 1.0, "value_scales": {"ghost": 2.0}},
        (("participant", names("value_scales['ghost']")),),
    ),
    Case(
        "POST",
        "/auctions/{A3}/resolve",
        keyed(200, 403, 404),
        {"tau": 1.0, "advertisers": ["bravo7"]},
        (("participant", names("advertisers[0]")),),
    ),
    Case(
        "POST",
        "/auctions/{A3}/resolve",
        keyed(200, 403, 404),
        {"tau": 1.0, "advertisers": ["alpha7", "charlie7"]},
        (("participant", names("advertisers[1]")),),
    ),
    Case("GET", "/ledger/advertisers/alpha7", keyed(200, 200, 403), None, (("participant", own_history),)),
    Case("GET", "/ledger/advertisers/bravo7", keyed(200, 403, 403)),
    Case("GET", "/ledger/summary", PLATFORM_ONLY),
    Case("GET", "/metrics", PLATFORM_ONLY),
    Case("POST", "/auction", PLATFORM_ONLY, AUCTION),
    Case("POST", "/auctions/{A3}/render", PLATFORM_ONLY),
    Case("GET", "/", everyone(200), None, tuple((kind, no_auction_data) for kind in KEYS)),
    Case("GET", "/explorer/app.js", everyone(200), None, (("participant", no_auction_data),)),
    Case("GET", "/explorer/index.html", everyone(200), None, (("participant", no_auction_data),)),
    Case("GET", "/explorer/style.css", everyone(200)),
    Case("GET", "/explorer/instances.json", everyone(200), None, (("participant", no_auction_data),)),
    Case("GET", "/healthz", everyone(200)),
    Case("GET", "/openapi.json", everyone(200)),
    Case("GET", "/docs", everyone(200)),
]


@pytest.mark.parametrize("kind", list(KEYS))
@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: f"{c.method} {c.path} {json.dumps(c.body) if c.body else ''}"
)
def test_route_by_key_kind(
    case: Case, kind: str, gateways: dict[str, GatewayProcess], auctions: dict[str, dict[str, Any]]
) -> None:
    gateway, headers = KEYS[kind]
    url = gateways[gateway].url + case.path.format(A3=auctions["A3"]["auction_id"])
    response = httpx.request(case.method, url, json=case.body, headers=headers, timeout=120)
    assert response.status_code == case.statuses[kind], response.text
    for check_kind, check in case.checks:
        if check_kind == kind:
            check(response, auctions, gateways)


def test_two_advertisers_the_sum_is_the_other_vector(
    gateways: dict[str, GatewayProcess], auctions: dict[str, dict[str, Any]]
) -> None:
    """With one other advertiser the summed rewards she sees are that advertiser's reward vector (the
    disclosure DESIGN.md § Sealed views states), and still nothing else of bravo7's."""
    full = auctions["A2"]
    url = f"{gateways['keyed'].url}/auctions/{full['auction_id']}"
    body = httpx.get(url, headers=KEYS["participant"][1], timeout=30).json()
    assert_sealed(body, full)
    assert [c["others_reward"] for c in body["candidates"]] == [
        c["rewards"]["bravo7"] for c in full["candidates"]
    ]


def test_ids_from_her_ledger_history_open_sealed_views(
    gateways: dict[str, GatewayProcess], auctions: dict[str, dict[str, Any]]
) -> None:
    """The path of the issue: alpha finds the auction ids in her own ledger history; each opens sealed
    (through `mosaic_client`, which parses the sealed model)."""
    url = gateways["keyed"].url
    deadline = time.monotonic() + 30
    with MosaicClient(url, api_key=ALPHA_KEY, retries=0) as alpha:
        while True:
            history = {entry["auction_id"] for entry in alpha.advertiser_account("alpha7")["history"]}
            if {auctions["A3"]["auction_id"], auctions["A2"]["auction_id"]} <= history:
                break
            assert time.monotonic() < deadline, history
            time.sleep(0.2)
        for auction_id in history:
            view = alpha.get_auction(auction_id)
            assert isinstance(view, SealedAuctionRecord)
            assert view.advertiser.id == "alpha7" and view.request.advertiser.id == "alpha7"
            full = next((r for r in auctions.values() if r["auction_id"] == auction_id), None)
            if full is None:  # one of the route table's own auctions: she was alone
                continue
            assert_sealed(view.model_dump(mode="json"), full)
            assert resolve_own(view).advertiser.payment == pytest.approx(
                _alpha_row(full)["payment"], rel=0, abs=TOLERANCE
            )


@pytest.mark.parametrize("kind", ["platform", "participant"])
def test_answers_follow_the_openapi_document(
    kind: str, gateways: dict[str, GatewayProcess], auctions: dict[str, dict[str, Any]]
) -> None:
    """The full and the sealed answers both validate against the 200 schema the document states for
    `get_auction` and `resolve_auction` (anyOf: the full model or the sealed one)."""
    url = gateways["keyed"].url
    document = httpx.get(f"{url}/openapi.json", timeout=30).json()
    headers = KEYS[kind][1]
    record = f"{url}/auctions/{auctions['A3']['auction_id']}"
    answers = {
        ("/auctions/{auction_id}", "get"): httpx.get(record, headers=headers, timeout=30),
        ("/auctions/{auction_id}/resolve", "post"): httpx.post(
            f"{record}/resolve", json=OWN_SCALE, headers=headers, timeout=30
        ),
    }
    for (path, method), answer in answers.items():
        assert answer.status_code == 200, answer.text
        schema = document["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        validator = jsonschema.Draft202012Validator({**schema, "components": document["components"]})
        validator.validate(answer.json())
        assert ("view" in answer.json()) == (kind == "participant")
