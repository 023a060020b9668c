"""Disclosure in every answer and `GET /auctions/{id}/why`, against a real `mosaic serve` process.

One gateway process (keys on: a platform key, advertiser keys for `alpha7` and `delta7`) over the real
tiny-random worker process and a real Redis server; the real embedding model for `select`. Auctions:
three inline advertisers; two registered campaigns listed by id; a `select` request; a no-fill (regs:
coppa); a test auction; an Idempotency-Key replay.

Invariants: every answer's `disclosure` equals its stored record's, and names exactly the advertisers
whose `payments_micro` in that record is ≥ 1, by display name (a campaign's `name`), with no amount;
the label is "Sponsored · " and the names; a no-fill and a test auction say not sponsored; an
advertiser key's sealed view and /why name her alone and count the others (nothing of another
advertiser: the sealed views' leak check); /why gives each sponsor's basis (inline, listed campaign,
selected campaign with the selection's relevance), τ, M and the proposal, and the figures to the
platform and to her only; a record stored before disclosures reads with the same rule; /why answers
404 for an unknown id or an auction the key was not in, 401 without a key, and follows the OpenAPI
document; `mosaic_client` parses both.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
import redis

from app.auction.run_control import auction_key
from mosaic_client import AuctionWhy, Disclosure, MosaicClient, SealedAuctionRecord
from tests.fixtures_gateway import GatewayProcess, start_gateway_process
from tests.fixtures_redis import RedisServerProcess
from tests.fixtures_worker import WorkerProcess
from tests.sealed_checks import assert_nothing_of_the_others, json_numbers

pytestmark = pytest.mark.timeout(600)

PLATFORM_KEY = "disclosure-test-platform-key"
ALPHA_KEY = "disclosure-test-alpha-key"
DELTA_KEY = "disclosure-test-delta-key"
PLATFORM = {"Authorization": f"Bearer {PLATFORM_KEY}"}
ALPHA = {"Authorization": f"Bearer {ALPHA_KEY}"}
DELTA = {"Authorization": f"Bearer {DELTA_KEY}"}
QUERY = "Learning to play the guitar."
INLINE = [
    {"id": "alpha7", "name": "Alphaqz", "description": "selling guitars and tuners", "value_scale": 0.5},
    {"id": "bravo7", "name": "Bravoqz", "description": "bravo-secret-description", "value_scale": 0.7},
    {"id": "charlie7", "name": "Charlieqz", "description": "charlie-secret-description", "value_scale": 0.3},
]
CAMPAIGNS = [
    (
        "dc-guitar",
        "delta7",
        "Deltaqz Guitars",
        "selling guitars, tuners, and learning materials for beginners",
    ),
    (
        "dc-lessons",
        "echo7",
        "Echoqz Lessons",
        "offering online guitar lessons and interactive practice tools",
    ),
    ("dc-skin", "foxtrot7", "Foxtrotqz Skin", "providing moisturizers and serums for dry skin"),
]


@pytest.fixture(scope="module")
def gateway(
    tiny_worker: WorkerProcess, redis_process: RedisServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    process = start_gateway_process(
        tiny_worker.url,
        redis_process.url,
        tmp_path_factory.mktemp("disclosure"),
        API_KEYS=PLATFORM_KEY,
        ADVERTISER_API_KEYS=json.dumps({"alpha7": [ALPHA_KEY], "delta7": [DELTA_KEY]}),
    )
    try:
        for campaign_id, owner, name, description in CAMPAIGNS:
            body = {
                "id": campaign_id,
                "owner": owner,
                "name": name,
                "description": description,
                "budget": {"total_micro": 10**12},
            }
            created = httpx.post(f"{process.url}/campaigns", json=body, headers=PLATFORM, timeout=30)
            assert created.status_code == 201, created.text
        yield process
    finally:
        process.stop()


def run(gateway: GatewayProcess, **fields: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the answer, the stored full record) of one auction."""
    body = {"query": QUERY, "candidates": 3, "max_tokens": 4, "seed": 11, **fields}
    served = httpx.post(f"{gateway.url}/auction", json=body, headers=PLATFORM, timeout=180)
    assert served.status_code == 200, served.text
    answer: dict[str, Any] = served.json()
    stored = httpx.get(f"{gateway.url}/auctions/{answer['auction_id']}", headers=PLATFORM, timeout=30)
    assert stored.status_code == 200, stored.text
    return answer, stored.json()


def why(gateway: GatewayProcess, auction_id: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.get(f"{gateway.url}/auctions/{auction_id}/why", headers=headers, timeout=30)


def assert_rule(answer: dict[str, Any], record: dict[str, Any]) -> list[str]:
    """The answer's disclosure is the record's and names exactly who was charged ≥ 1 micro-unit."""
    disclosure = Disclosure.model_validate(record["disclosure"])
    assert Disclosure.model_validate(answer["disclosure"]) == disclosure
    charged = {aid for aid, micro in record["payments_micro"].items() if micro >= 1}
    assert {s.id for s in disclosure.sponsors} == charged
    names = {row["id"]: row["name"] for row in record["request"]["advertisers"]}
    assert [s.name for s in disclosure.sponsors] == sorted((names[aid] for aid in charged), key=str.casefold)
    assert [s.name for s in disclosure.sponsors] == [names[s.id] for s in disclosure.sponsors]
    if charged:
        assert disclosure.label == "Sponsored · " + ", ".join(s.name for s in disclosure.sponsors)
    chosen = (record.get("candidates") or [{}])[record["chosen_index"]]
    assert disclosure.metadata.advertisers_in_prompt is (chosen.get("proposal") == "context")
    shown = json.loads(disclosure.model_dump_json())
    assert shown["metadata"].pop("version") == 1 and json_numbers(shown) == []  # no amount
    return [s.id for s in disclosure.sponsors]


def test_inline_auction_discloses_the_charged_and_seals_it_for_each(gateway: GatewayProcess) -> None:
    """Three inline advertisers: the answer, the record, alpha's sealed view and the /why of each key."""
    answer, record = run(gateway, advertisers=INLINE)
    sponsors = assert_rule(answer, record)
    assert (
        sponsors
        and answer["disclosure"]["sponsored"]
        and answer["disclosure"]["metadata"]["reason"] == "charged"
    )

    full = AuctionWhy.model_validate(why(gateway, answer["auction_id"], PLATFORM).json())
    assert full.view == "full" and [s.id for s in full.sponsors] == sponsors
    assert all(s.basis == "inline" and s.figures is not None for s in full.sponsors)
    assert full.tau == record["tau"] and full.tau_basis == "default" and full.candidates == 3
    scales = {row["id"]: row["value_scale"] for row in INLINE}
    for sponsor in full.sponsors:
        assert sponsor.figures is not None and sponsor.figures.paced_value_scale == scales[sponsor.id]
        row = next(r for r in record["advertisers"] if r["id"] == sponsor.id)
        assert sponsor.figures.expected_reward == row["expected_reward"]

    view = httpx.get(f"{gateway.url}/auctions/{answer['auction_id']}", headers=ALPHA, timeout=30).json()
    assert_nothing_of_the_others(view, record, "alpha7")
    sealed = SealedAuctionRecord.model_validate(view).disclosure
    assert [s.id for s in sealed.sponsors] == (["alpha7"] if "alpha7" in sponsors else [])
    assert sealed.other_sponsors == len(set(sponsors) - {"alpha7"})
    mine = why(gateway, answer["auction_id"], ALPHA)
    assert mine.status_code == 200, mine.text
    assert_nothing_of_the_others(mine.json(), record, "alpha7")
    assert mine.json()["other_sponsors"] == sealed.other_sponsors
    assert [s["id"] for s in mine.json()["sponsors"]] == [s.id for s in sealed.sponsors]
    assert why(gateway, answer["auction_id"], DELTA).status_code == 404  # not hers: as if absent


def test_campaigns_are_disclosed_by_their_name_and_why_says_listed(gateway: GatewayProcess) -> None:
    answer, record = run(gateway, campaigns=["dc-guitar", "dc-lessons"], seed=12)
    sponsors = assert_rule(answer, record)
    assert set(sponsors) <= {"delta7", "echo7"} and sponsors
    full = why(gateway, answer["auction_id"], PLATFORM).json()
    for sponsor in full["sponsors"]:
        assert sponsor["basis"] == "campaign" and sponsor["campaign_id"] in {"dc-guitar", "dc-lessons"}
        assert f"'{sponsor['campaign_id']}'" in sponsor["reason"]
        row = next(r for r in record["advertisers"] if r["id"] == sponsor["id"])
        figures = sponsor["figures"]
        assert figures["pacing_multiplier"] == row["pacing_multiplier"]
        assert figures["paced_value_scale"] == pytest.approx(
            row["value_scale"] * row["pacing_multiplier"] * row["budget_multiplier"], rel=1e-15
        )
    if "delta7" in sponsors:
        delta = why(gateway, answer["auction_id"], DELTA).json()
        assert [s["name"] for s in delta["sponsors"]] == ["Deltaqz Guitars"]
        assert "Echoqz" not in json.dumps(delta) and "echo7" not in json.dumps(delta)


def test_a_selected_campaign_says_what_the_selection_saw(gateway: GatewayProcess) -> None:
    answer, record = run(gateway, select={"max": 2}, seed=13)
    sponsors = assert_rule(answer, record)
    considered = {c["campaign_id"]: c for c in record["selection"]["considered"]}
    full = why(gateway, answer["auction_id"], PLATFORM).json()
    assert [s["id"] for s in full["sponsors"]] == sponsors
    for sponsor in full["sponsors"]:
        seen = considered[sponsor["campaign_id"]]
        assert sponsor["basis"] == "selected" and seen["selected"]
        assert sponsor["selection"]["relevance"] == seen["relevance"]
        assert (
            sponsor["selection"]["keyword_match"] == seen["keyword_match"]
            and sponsor["selection"]["max"] == 2
        )
        assert f"relevance {seen['relevance']:.3f}" in sponsor["reason"]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [({"regs": {"coppa": True}}, "no_fill"), ({"test": True}, "test")],
    ids=["no-fill", "test"],
)
def test_no_fill_and_test_auctions_are_not_sponsored(
    gateway: GatewayProcess, fields: dict[str, Any], reason: str
) -> None:
    answer, record = run(gateway, advertisers=INLINE[:2], **fields)
    for disclosure in (answer["disclosure"], record["disclosure"]):
        assert disclosure["sponsored"] is False and disclosure["sponsors"] == []
        assert disclosure.get("label") is None and disclosure["metadata"]["reason"] == reason
    if reason == "test":  # charged on paper, never billed: still not sponsored
        assert any(micro >= 1 for micro in record["payments_micro"].values())
    full = why(gateway, answer["auction_id"], PLATFORM).json()
    assert full["sponsored"] is False and full["sponsors"] == [] and full["reason"] == reason


def test_a_replayed_answer_carries_the_same_disclosure(gateway: GatewayProcess) -> None:
    body = {"query": QUERY, "advertisers": INLINE[:2], "candidates": 2, "max_tokens": 3, "seed": 4}
    headers = {**PLATFORM, "Idempotency-Key": "disclosure-replay-1"}
    first = httpx.post(f"{gateway.url}/auction", json=body, headers=headers, timeout=180)
    again = httpx.post(f"{gateway.url}/auction", json=body, headers=headers, timeout=180)
    assert first.status_code == again.status_code == 200, again.text
    assert first.json()["disclosure"] == again.json()["disclosure"]


def test_why_statuses_the_client_and_the_document(gateway: GatewayProcess) -> None:
    """404 unknown id (and a malformed one), 401 without a key; the typed client; the OpenAPI schema."""
    answer, _ = run(gateway, advertisers=INLINE[:2], seed=5)
    auction_id = answer["auction_id"]
    assert why(gateway, "0123456789abcdef", PLATFORM).status_code == 404
    assert why(gateway, "not-an-id!", PLATFORM).status_code == 404
    assert why(gateway, auction_id, {}).status_code == 401
    document = httpx.get(f"{gateway.url}/openapi.json", timeout=30).json()
    operation = document["paths"]["/auctions/{auction_id}/why"]["get"]
    assert operation["operationId"] == "explain_auction"
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    validator = jsonschema.Draft202012Validator({**schema, "components": document["components"]})
    for headers in (PLATFORM, ALPHA):
        validator.validate(why(gateway, auction_id, headers).json())
    with MosaicClient(gateway.url, api_key=ALPHA_KEY, retries=0) as alpha:
        explained = alpha.why(auction_id)
        assert explained.view == "sealed" and all(s.id == "alpha7" for s in explained.sponsors)
    with MosaicClient(gateway.url, api_key=PLATFORM_KEY, retries=0) as platform:
        served = platform.auction(QUERY, INLINE[:1], candidates=2, max_tokens=3, seed=6)
        assert isinstance(served.disclosure, Disclosure)
        assert platform.why(served.auction_id).sponsored == served.disclosure.sponsored


def test_a_record_stored_before_disclosures_is_read_with_the_same_rule(
    gateway: GatewayProcess, redis_process: RedisServerProcess
) -> None:
    """A record written before this field existed (same TTL'd key, no `disclosure`) reads with the
    disclosure the rule gives it: the full record, the sealed view and /why (no 500 after an upgrade)."""
    answer, record = run(gateway, advertisers=INLINE, seed=14)
    legacy = {k: v for k, v in record.items() if k != "disclosure"} | {"auction_id": "feed" * 8}
    with redis.Redis.from_url(redis_process.url) as client:
        client.set(auction_key(legacy["auction_id"]), json.dumps(legacy), ex=600)
    read = httpx.get(f"{gateway.url}/auctions/{legacy['auction_id']}", headers=PLATFORM, timeout=30).json()
    expected = record["disclosure"] | {"metadata": {**record["disclosure"]["metadata"]}}
    expected["metadata"]["parameters"] = f"/auctions/{legacy['auction_id']}/why"
    assert read["disclosure"] == expected
    sealed = httpx.get(f"{gateway.url}/auctions/{legacy['auction_id']}", headers=ALPHA, timeout=30)
    assert (
        sealed.status_code == 200
        and sealed.json()["disclosure"]["sponsored"] == answer["disclosure"]["sponsored"]
    )
    assert (
        why(gateway, legacy["auction_id"], PLATFORM).json()["sponsors"]
        == why(gateway, answer["auction_id"], PLATFORM).json()["sponsors"]
    )
