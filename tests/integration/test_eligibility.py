"""Who may enter an auction, and the no-fill reply when nobody does (issue 34), end to end in process:
a real tiny-random worker process, a real Redis server, the app (TestClient).

Regs and consent turn ads off before any campaign is read; `bcat` / `badv` leave campaigns out;
frequency caps per (campaign, user_id) are reserved before the model work and released when the
auction fails or never runs; nobody bidding answers ONE organic reply (π_ref, the request's seed), no
scoring, nothing billed, `billing: none`, a `no_fill` reason, the record stored, a metric; `select`
whose selector cannot open is a 503 naming the cause; each new field's bad value is a 422 naming it.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from app.gateway.app import create_app
from app.ledger.budget import BudgetLedger, BudgetLimits, Reservation
from app.ledger.frequency import FrequencyHold, FrequencyLedger, user_hash
from app.ledger.reconcile import ReconcileReport, reconcile
from app.ledger.redis_store import make_client
from app.settings import Settings
from tests.fixtures_redis import RedisServerProcess
from tests.fixtures_worker import WorkerProcess
from tests.integration.test_campaign_auction import create
from tests.integration.test_gateway import make_settings

pytestmark = pytest.mark.timeout(300)

QUERY = "Learning to play the guitar."
INLINE = {"id": "strummaster", "name": "StrumMaster", "description": "selling guitars and tuners"}


@pytest.fixture(scope="module")
def settings(
    tiny_worker: WorkerProcess, redis_process: RedisServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return make_settings([tiny_worker.url], redis_process.url, tmp_path_factory.mktemp("eligibility"))


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def post(client: TestClient, seed: int = 1, **fields: Any) -> dict[str, Any]:
    body = {"query": QUERY, "candidates": 2, "max_tokens": 6, "seed": seed, **fields}
    response = client.post("/auction", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def stream_length(settings: Settings) -> int:
    return int(redis.Redis.from_url(str(settings.redis_url)).xlen(settings.billing_stream))


def metric(client: TestClient, name: str, label: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f"{name}{{") and label in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def assert_no_fill(client: TestClient, answer: dict[str, Any], reason: str) -> None:
    """The no-fill shape: one organic reply, nobody, nothing billed, the reason; its record stored."""
    assert answer["no_fill"]["reason"] == reason and answer["no_fill"]["detail"]
    assert answer["billing"] == "none" and answer["advertisers"] == [] and answer["revenue"] == 0.0
    assert answer["proposal"] == "reference" and answer["chosen_index"] == 0 and answer["reply"]
    assert answer["timings_ms"]["score"] == 0.0 and answer["timings_ms"]["mechanism"] == 0.0
    record = client.get(f"/auctions/{answer['auction_id']}").json()
    assert record["no_fill"] == answer["no_fill"] and record["reply"] == answer["reply"]
    assert record["payments_micro"] == {} and record["billing"] == "none"
    for action, body in (("render", None), ("resolve", {"tau": 2.0})):  # nothing to bill or resolve
        refused = client.post(f"/auctions/{answer['auction_id']}/{action}", json=body)
        assert refused.status_code == 409 and "no-fill" in refused.json()["detail"], refused.text


@pytest.mark.parametrize(
    ("regs", "flag"),
    [({"coppa": True}, "coppa"), ({"minor": True}, "minor"), ({"ads_consent": False}, "ads_consent")],
)
def test_regs_turn_ads_off_before_any_campaign_is_read(
    client: TestClient, settings: Settings, regs: dict[str, bool], flag: str
) -> None:
    """Invariant: coppa, minor or no consent → no ads at all (inline advertisers too): a no-fill
    `no_consent` naming the flag, no campaign read (nothing `excluded`, not even an unknown id), nothing
    in the billing stream, `mosaic_no_fill_total{reason="no_consent"}` counted; the reply replays by seed."""
    before, counted = stream_length(settings), metric(client, "mosaic_no_fill_total", 'reason="no_consent"')
    body = {"advertisers": [INLINE], "campaigns": ["nobody-has-this-id"], "regs": regs}
    answer = post(client, seed=42, **body)
    assert_no_fill(client, answer, "no_consent")
    assert flag in answer["no_fill"]["detail"] and "excluded" not in answer
    assert post(client, seed=42, **body)["reply"] == answer["reply"]  # one π_ref sample of the seed
    assert stream_length(settings) == before
    assert metric(client, "mosaic_no_fill_total", 'reason="no_consent"') == counted + 2


def test_nobody_bids_is_a_no_fill_with_the_reason(client: TestClient, settings: Settings) -> None:
    """Invariant: every campaign left out and nobody inline → a no-fill, never an auction: all_excluded
    (mixed reasons, each listed in `excluded`), all_out_of_budget when every one is out of budget;
    nothing billed for either, and `mosaic ledger reconcile` counts them as never billed (no difference)."""
    create(client, "nf-paused", "nf-owner-paused", status="paused")
    create(client, "nf-broke", "nf-owner-broke", budget={"total_micro": 1000})
    asyncio.run(_spend_all(settings, "nf-broke", 1000))
    before = stream_length(settings)
    answer = post(client, campaigns=["nf-paused", "nf-nobody"])
    assert_no_fill(client, answer, "all_excluded")
    assert {x["campaign_id"]: x["reason"] for x in answer["excluded"]} == {
        "nf-paused": "paused",
        "nf-nobody": "not_found",
    }
    assert_no_fill(client, post(client, campaigns=["nf-broke"]), "all_out_of_budget")
    assert stream_length(settings) == before
    report = asyncio.run(_reconcile(settings))  # a no-fill is never billed, and reconcile knows it
    assert report.no_fill_records >= 2
    assert answer["auction_id"] not in {difference.subject for difference in report.differences}


async def _reconcile(settings: Settings) -> ReconcileReport:
    client = make_client(str(settings.redis_url), settings)
    try:
        return await reconcile(client, settings)
    finally:
        await client.aclose()


async def _spend_all(settings: Settings, campaign_id: str, amount: int) -> None:
    """Hold the campaign's whole budget with a reservation (another auction's, for an hour)."""
    client = make_client(str(settings.redis_url), settings)
    try:
        now = int(time.time() * 1000)
        limits = BudgetLimits(daily_micro=None, total_micro=amount)
        held = Reservation(campaign_id, "elsewhere", amount, limits, "2026-01-01", now + 3_600_000)
        assert await BudgetLedger(client, settings).reserve_all([held], now) == [True]
    finally:
        await client.aclose()


def test_bcat_and_badv_leave_requested_campaigns_out(client: TestClient) -> None:
    """Invariant: a campaign whose targeting categories meet the request's `bcat` is left out `bcat`;
    one whose owner is in `badv` is left out `badv`; the others enter as before."""
    create(client, "bl-health", "bl-owner-a", targeting={"categories": ["IAB7"]})
    create(client, "bl-owned", "bl-owner-b")
    create(client, "bl-ok", "bl-owner-c", targeting={"categories": ["IAB1"]})
    answer = post(client, campaigns=["bl-health", "bl-owned", "bl-ok"], bcat=["IAB7"], badv=["bl-owner-b"])
    assert {x["campaign_id"]: x["reason"] for x in answer["excluded"]} == {
        "bl-health": "bcat",
        "bl-owned": "badv",
    }
    assert [row["campaign_id"] for row in answer["advertisers"]] == ["bl-ok"]


def test_frequency_cap_holds_and_then_no_fill_all_capped(client: TestClient, settings: Settings) -> None:
    """Invariant: a campaign capped at 2 auctions per hour enters exactly 2 auctions of one user_id, then
    is left out `frequency_capped` (alone: a no-fill `all_capped`); another user, or no user_id, is not
    affected; the count is kept per SHA-256 of the id, never the id."""
    create(client, "fc-two", "fc-owner", frequency_cap={"max_auctions": 2, "per_seconds": 3600})
    served = [post(client, seed=s, campaigns=["fc-two"], user_id="fc-user") for s in (1, 2)]
    assert all(row["campaign_id"] == "fc-two" for a in served for row in a["advertisers"])
    capped = post(client, seed=3, campaigns=["fc-two"], user_id="fc-user")
    assert_no_fill(client, capped, "all_capped")
    assert capped["excluded"] == [{"campaign_id": "fc-two", "reason": "frequency_capped"}]
    mixed = post(client, seed=4, campaigns=["fc-two"], user_id="fc-user", advertisers=[INLINE])
    assert [r["id"] for r in mixed["advertisers"]] == ["strummaster"] and "no_fill" not in mixed
    assert post(client, seed=5, campaigns=["fc-two"], user_id="fc-other")["advertisers"]
    assert post(client, seed=6, campaigns=["fc-two"])["advertisers"]  # no user_id: caps do not apply
    keys = redis.Redis.from_url(str(settings.redis_url)).keys("mosaic:fcap:*")
    assert all(b"fc-user" not in key for key in keys)
    assert f"mosaic:fcap:{{fc-two}}:{user_hash('fc-user')}".encode() in keys


def test_a_failed_auction_gives_its_cap_slot_back(client: TestClient, settings: Settings) -> None:
    """Invariant: a cap slot is reserved before the model work and voided when the auction fails (here
    its own deadline, a 504): the next auction of the user gets it at once, not after its expiry; a
    test auction counts the cap but never takes a slot."""
    create(client, "fv-one", "fv-owner", frequency_cap={"max_auctions": 1, "per_seconds": 3600})
    body = {"query": QUERY, "candidates": 2, "max_tokens": 6, "campaigns": ["fv-one"], "user_id": "fv-user"}
    failed = client.post("/auction", json={**body, "tmax_ms": 1})
    assert failed.status_code == 504, failed.text
    hold = FrequencyHold("fv-one", user_hash("fv-user"), 1, 3600)
    assert asyncio.run(_count(settings, hold)) == (0, 0)
    tested = post(client, **body, test=True)
    assert tested["advertisers"] and tested["billing"] == "test"
    served = post(client, **body)
    assert [row["campaign_id"] for row in served["advertisers"]] == ["fv-one"]
    assert post(client, **body)["excluded"] == [{"campaign_id": "fv-one", "reason": "frequency_capped"}]
    assert post(client, **body, test=True)["excluded"][0]["reason"] == "frequency_capped"


def test_a_replayed_request_gives_its_cap_slot_back(client: TestClient, settings: Settings) -> None:
    """Invariant: a request answered without running (an Idempotency-Key replay) holds no slot after
    its answer: the slot its preparation reserved goes back at once."""
    create(client, "fr-two", "fr-owner", frequency_cap={"max_auctions": 2, "per_seconds": 3600})
    body = {"query": QUERY, "candidates": 2, "max_tokens": 6, "campaigns": ["fr-two"], "user_id": "fr-user"}
    headers = {"Idempotency-Key": "fr-key-1"}
    first = client.post("/auction", json=body, headers=headers)
    again = client.post("/auction", json=body, headers=headers)
    assert again.headers.get("Idempotent-Replayed") == "true" and again.json() == first.json()
    hold = FrequencyHold("fr-two", user_hash("fr-user"), 2, 3600)
    posted, pending = asyncio.run(_count(settings, hold))
    assert (posted + pending) == 1
    assert post(client, seed=9, **body)["advertisers"]  # the second slot is free


async def _count(settings: Settings, hold: FrequencyHold) -> tuple[int, int]:
    client = make_client(str(settings.redis_url), settings)
    try:
        for _ in range(50):  # the gateway posts after the reply: wait for it
            counted = await FrequencyLedger(client, settings).count(hold, int(time.time() * 1000))
            if counted.pending == 0:
                break
            await asyncio.sleep(0.05)
        return counted.posted, counted.pending
    finally:
        await client.aclose()


def test_a_selector_that_cannot_open_is_a_503_naming_the_cause(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Invariant: when the campaign selector cannot be opened (here: the embedding model's package is
    missing), `select` is refused 503 `selection_unavailable` naming the cause (a clear fault, not an
    empty auction, nothing billed) and retried on the next request; with ads turned off it is a no-fill
    all the same (no selector needed)."""
    import app.auction.selection_hook as hook

    async def missing(*_: object, **__: object) -> object:
        raise ImportError("no module named 'all_minilm_l6_v2'")

    monkeypatch.setattr(hook, "open_selector", missing)
    response = client.post("/auction", json={"query": QUERY, "select": {"max": 2}})
    assert response.status_code == 503, response.text
    assert "selection_unavailable" in response.json()["detail"] and "all_minilm_l6_v2" in response.text
    answer = post(client, select={"max": 2}, regs={"coppa": True})
    assert answer["no_fill"]["reason"] == "no_consent"


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"select": {"max": 0}}, ["body", "select", "max"]),
        ({"select": {"max": 2.5}}, ["body", "select", "max"]),
        ({"select": {"max": 99}}, ["body", "select", "max"]),
        ({"select": {"max": 2, "min_relevance": 1.5}}, ["body", "select", "min_relevance"]),
        ({"select": {"max": 2, "extra": 1}}, ["body", "select", "extra"]),
        ({"select": {"max": 2}, "campaigns": ["a"]}, ["body", "select"]),
        ({"campaigns": ["a"], "user_id": "x" * 129}, ["body", "user_id"]),
        ({"campaigns": ["a"], "user_id": " bad id"}, ["body", "user_id"]),
        ({"campaigns": ["a"], "user_id": 7}, ["body", "user_id"]),
        ({"campaigns": ["a"], "regs": {"coppa": "yes"}}, ["body", "regs", "coppa"]),
        ({"campaigns": ["a"], "regs": {"minor": 1}}, ["body", "regs", "minor"]),
        ({"campaigns": ["a"], "regs": {"ads_consent": None}}, ["body", "regs", "ads_consent"]),
        ({"campaigns": ["a"], "regs": {"gdpr": True}}, ["body", "regs", "gdpr"]),
        ({"campaigns": ["a"], "bcat": ["IAB7", "IAB7"]}, ["body", "bcat"]),
        ({"campaigns": ["a"], "bcat": [f"IAB{i}" for i in range(51)]}, ["body", "bcat"]),
        ({"campaigns": ["a"], "bcat": ["no spaces"]}, ["body", "bcat", 0]),
        ({"campaigns": ["a"], "badv": ["x", "x"]}, ["body", "badv"]),
        ({"campaigns": ["a"], "badv": [f"o{i}" for i in range(101)]}, ["body", "badv"]),
        ({"campaigns": ["a"], "badv": [""]}, ["body", "badv", 0]),
    ],
)
def test_each_new_field_is_a_422_naming_it(
    client: TestClient, fields: dict[str, Any], loc: list[Any]
) -> None:
    """Invariant: a bad `select`, `user_id`, `regs`, `bcat` or `badv` is refused 422 naming the field."""
    response = client.post("/auction", json={"query": QUERY, **fields})
    assert response.status_code == 422, response.text
    assert loc in [error["loc"][: len(loc)] for error in response.json()["detail"]], response.text


def test_a_no_fill_answers_well_under_an_auctions_time(client: TestClient) -> None:
    """Invariant: a no-fill is one tokenize and one generate of ONE reply, nothing scored: its p50
    is well under an auction's (same query, M = 4, two advertisers) on the same worker."""
    second = {"id": "chordify", "name": "Chordify", "description": "online guitar lessons"}

    def p50(**fields: Any) -> float:
        times = []
        for seed in range(12):
            begin = time.perf_counter()
            post(client, seed=100 + seed, candidates=4, max_tokens=16, **fields)
            times.append((time.perf_counter() - begin) * 1000)
        return statistics.median(times[2:])  # the first two warm up

    auction_ms = p50(advertisers=[INLINE, second])
    no_fill_ms = p50(advertisers=[INLINE], regs={"ads_consent": False})
    print(f"no_fill_p50_ms={no_fill_ms:.1f} auction_p50_ms={auction_ms:.1f}")
    assert no_fill_ms < 0.6 * auction_ms, (no_fill_ms, auction_ms)


def test_a_keyed_no_fill_replays_and_is_never_billed(client: TestClient, settings: Settings) -> None:
    """Invariant: a no-fill with an Idempotency-Key stores its answer under the key (with its record, in
    one write): the retry gets the same body, replayed, and nothing reaches the billing stream."""
    before = stream_length(settings)
    body = {"query": QUERY, "max_tokens": 6, "advertisers": [INLINE], "regs": {"minor": True}}
    first = client.post("/auction", json=body, headers={"Idempotency-Key": "nf-key-1"})
    again = client.post("/auction", json=body, headers={"Idempotency-Key": "nf-key-1"})
    assert first.status_code == again.status_code == 200, again.text
    assert again.headers.get("Idempotent-Replayed") == "true" and again.json() == first.json()
    assert first.json()["no_fill"]["reason"] == "no_consent" and stream_length(settings) == before
