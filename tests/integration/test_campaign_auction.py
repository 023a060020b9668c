"""`POST /auction` with `campaigns: [ids]`: who enters, at what multipliers, and what the record replays.

A real tiny-random worker process, a real Redis server, the app in process (TestClient). The auction
of a campaign is compared with a test auction (never billed) of the same seed in which the campaign's
advertiser is given inline at the value scale the campaign auction applied: the candidates do not
depend on the value scales (MECHANISM.md), so the two must agree on everything.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
from fastapi.testclient import TestClient

from app import mechanism
from app.auction.engine_client import derive_seed
from app.auction.sampler import SEED_ALLOCATION
from app.campaigns.participants import CampaignResolver
from app.campaigns.spend import BudgetSpender, FitInputs, hold_amount
from app.campaigns.store import CampaignStore
from app.contract.request import AuctionRequest
from app.gateway.app import create_app
from app.ledger.budget import BudgetLedger, Reservation, budget_key
from app.ledger.events import to_micro_units
from tests.fixtures_redis import RedisServerProcess
from tests.fixtures_worker import WorkerProcess
from tests.integration.test_gateway import make_settings

pytestmark = pytest.mark.timeout(120)

QUERY = "Learning to play the guitar."
OTHER = {"id": "strummaster", "name": "StrumMaster", "description": "selling guitars and tuners"}


@pytest.fixture(scope="module")
def client(
    tiny_worker: WorkerProcess, redis_process: RedisServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    settings = make_settings([tiny_worker.url], redis_process.url, tmp_path_factory.mktemp("campaigns"))
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def create(client: TestClient, campaign_id: str, owner: str, **fields: Any) -> dict[str, Any]:
    body = {
        "id": campaign_id,
        "owner": owner,
        "name": owner.title(),
        "description": f"{owner}: guitar lessons for grown-ups",
        "value_scale": 1.0,
        "budget": {"total_micro": 10**12},
        **fields,
    }
    response = client.post("/campaigns", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def twin(campaign: dict[str, Any], value_scale: float) -> dict[str, Any]:
    """The campaign's advertiser inline (id = owner, same texts: the same prompts) at `value_scale`."""
    return {
        "id": campaign["owner"],
        "name": campaign["name"],
        "description": campaign["description"],
        "value_scale": value_scale,
    }


def auction(client: TestClient, seed: int, **fields: Any) -> dict[str, Any]:
    body = {
        "query": QUERY,
        "candidates": 4,
        "max_tokens": 8,
        "seed": seed,
        "include_candidates": True,
        **fields,
    }
    response = client.post("/auction", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def row_of(answer: dict[str, Any], advertiser_id: str) -> dict[str, Any]:
    (row,) = [row for row in answer["advertisers"] if row["id"] == advertiser_id]
    return row


def rewards_of(answer: dict[str, Any], advertiser_id: str) -> np.ndarray:
    return np.array([c["rewards"][advertiser_id] for c in answer["candidates"]])


def present(row: dict[str, Any]) -> dict[str, Any]:
    """The fields an answer states (the record also lists the absent ones, as null)."""
    return {key: value for key, value in row.items() if value is not None}


def replay(record: dict[str, Any]) -> mechanism.AuctionOutcome:
    """`app.mechanism.run_auction` on the record's candidate table, drawing with the record's seed."""
    ids = [row["id"] for row in record["advertisers"]]
    candidates = record["candidates"]
    rewards = np.array([[c["rewards"][aid] for c in candidates] for aid in ids])
    log_ref = np.array([c["log_ref"] for c in candidates])
    log_q = np.array([c["log_proposal"] for c in candidates])
    rng = np.random.default_rng(derive_seed(record["seed"], SEED_ALLOCATION))
    return mechanism.run_auction(rewards, log_ref, log_q, record["tau"], rng)


def assert_replays(client: TestClient, answer: dict[str, Any]) -> dict[str, Any]:
    """The stored record repeats the answer and replays by seed: the same payments, the same draw."""
    record: dict[str, Any] = client.get(f"/auctions/{answer['auction_id']}").json()
    assert [present(row) for row in record["advertisers"]] == answer["advertisers"]
    assert record["candidates"] == answer["candidates"]
    outcome = replay(record)
    np.testing.assert_allclose(
        outcome.payments, [row["payment"] for row in record["advertisers"]], atol=1e-12
    )
    assert outcome.chosen_index == record["chosen_index"]
    for row in record["advertisers"]:
        assert record["payments_micro"][row["id"]] == to_micro_units(row["payment"])
    return record


def assert_same_auction(campaign: dict[str, Any], inline: dict[str, Any]) -> None:
    """Same candidates, the same rewards of every advertiser to 1e-12, the same payments."""
    assert [c["text"] for c in campaign["candidates"]] == [c["text"] for c in inline["candidates"]]
    for key in ("log_ref", "log_proposal", "probability"):
        np.testing.assert_allclose(
            [c[key] for c in campaign["candidates"]], [c[key] for c in inline["candidates"]], atol=1e-12
        )
    assert [row["id"] for row in campaign["advertisers"]] == [row["id"] for row in inline["advertisers"]]
    for row in inline["advertisers"]:
        np.testing.assert_allclose(rewards_of(campaign, row["id"]), rewards_of(inline, row["id"]), atol=1e-12)
        assert row_of(campaign, row["id"])["payment"] == pytest.approx(row["payment"], abs=1e-12)
    assert campaign["chosen_index"] == inline["chosen_index"]


def rfc3339(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def test_pacing_multiplier_scales_rewards_and_payments_consistently(
    client: TestClient, redis_process: RedisServerProcess
) -> None:
    """Invariant: a campaign at pacing state μ bids α·s with α = 1/(1+μ), fixed before the auction: its
    candidates' rewards are α·s·(log π_i − log π_ref) — the very rewards, payments and draw of a test
    auction of the same seed with the advertiser inline at value_scale α·s — the answer states
    campaign_id, s, α and budget multiplier 1, and the stored record replays by seed."""
    campaign = create(client, "pace-1", "pacer", value_scale=1.5)
    mu = 0.25
    redis.Redis.from_url(redis_process.url).hset(budget_key("pace-1"), "mu", repr(mu))
    paced = auction(client, 4242, advertisers=[OTHER], campaigns=["pace-1"])
    row = row_of(paced, "pacer")
    alpha = 1.0 / (1.0 + mu)
    assert row["campaign_id"] == "pace-1" and row["value_scale"] == 1.5
    assert row["pacing_multiplier"] == pytest.approx(alpha, rel=1e-15) and row["budget_multiplier"] == 1.0
    assert paced["billing"] == "billed" and not paced.get("excluded")

    bid = row["value_scale"] * row["pacing_multiplier"]  # α·s, as the service computes it
    inline = auction(client, 4242, advertisers=[OTHER, twin(campaign, bid)], test=True)
    assert_same_auction(paced, inline)
    unpaced = auction(client, 4242, advertisers=[OTHER, twin(campaign, 1.5)], test=True)
    np.testing.assert_allclose(rewards_of(paced, "pacer"), alpha * rewards_of(unpaced, "pacer"), rtol=1e-12)
    assert abs(row["payment"] - row_of(unpaced, "pacer")["payment"]) > 1e-9  # α ≠ 1 changed the outcome

    record = assert_replays(client, paced)
    (budget,) = record["budgets"]
    assert budget["campaign_id"] == "pace-1" and budget["advertiser_id"] == "pacer"
    assert budget["pacing_multiplier"] == row["pacing_multiplier"] and budget["budget_multiplier"] == 1.0
    assert (
        budget["remaining_micro"] == 10**12 and budget["reserved_micro"] == record["payments_micro"]["pacer"]
    )
    (ran,) = [a for a in record["request"]["advertisers"] if a["id"] == "pacer"]
    assert ran["value_scale"] == bid  # the request as the auction ran it: the paced bid


def test_each_exclusion_is_answered_with_its_reason(client: TestClient) -> None:
    """Invariant: a requested campaign that may not bid is left out and named in `excluded` with its
    reason (paused, archived, not_started, ended, not_found, same_owner: its owner is an inline
    advertiser or owns a campaign listed before it — one campaign per owner); the others bid."""
    now = datetime.now(UTC)
    create(client, "ex-paused", "owner-paused", status="paused")
    create(client, "ex-archived", "owner-archived")
    assert client.post("/campaigns/ex-archived/archive").status_code == 200
    create(client, "ex-later", "owner-later", schedule={"start": rfc3339(now + timedelta(days=1))})
    ended = {"start": rfc3339(now - timedelta(days=2)), "end": rfc3339(now - timedelta(days=1))}
    create(client, "ex-ended", "owner-ended", schedule=ended)
    create(client, "ex-mine", OTHER["id"])
    create(client, "dup-a", "dup-owner")
    create(client, "dup-b", "dup-owner")
    expected = {
        "ex-paused": "paused",
        "ex-archived": "archived",
        "ex-later": "not_started",
        "ex-ended": "ended",
        "ex-nobody": "not_found",
        "ex-mine": "same_owner",
        "dup-b": "same_owner",
    }
    answer = auction(client, 5, advertisers=[OTHER], campaigns=["dup-a", *expected])
    assert {x["campaign_id"]: x["reason"] for x in answer["excluded"]} == expected
    assert [row["id"] for row in answer["advertisers"]] == [OTHER["id"], "dup-owner"]
    assert row_of(answer, "dup-owner")["campaign_id"] == "dup-a"
    assert row_of(answer, OTHER["id"]).get("campaign_id") is None
    assert_replays(client, answer)


def test_all_campaigns_excluded_and_no_inline_is_an_organic_reply(client: TestClient) -> None:
    """Invariant: when every requested campaign is left out and nobody is inline, the reply is organic
    (a no-fill: one draw from the reference model), nobody is charged, nothing billed, and the answer
    says why each was left out."""
    create(client, "org-paused", "org-owner-paused", status="paused")
    answer = auction(client, 6, campaigns=["org-paused", "org-nobody"])
    assert answer["advertisers"] == [] and answer["revenue"] == 0.0 and answer["reply"]
    assert answer["proposal"] == "reference" and answer["billing"] == "none"
    assert answer["no_fill"]["reason"] == "all_excluded"
    assert {x["campaign_id"]: x["reason"] for x in answer["excluded"]} == {
        "org-paused": "paused",
        "org-nobody": "not_found",
    }
    record = client.get(f"/auctions/{answer['auction_id']}").json()
    assert record["payments_micro"] == {} and not record.get("budgets")
    assert client.get("/ledger/advertisers/org-owner-paused").json()["paid_micro"] == 0


def test_budget_binding_auction_lowers_the_campaign_until_its_payment_fits(client: TestClient) -> None:
    """Invariant: a campaign whose remaining budget is below its unconstrained payment is scaled down
    (0 < budget_multiplier < 1) until its payment, rounded to micro-units, is at most what remains;
    the record keeps the remaining budget and the multiplier, and its candidate table (rows × the
    multiplier) replays by seed; once the budget is used up the campaign is left out, `out_of_budget`,
    and the ledger never charged past it."""
    advertiser = {"owner": "binder", "name": "Binder", "description": "binder: guitar lessons for grown-ups"}
    free = auction(client, 777, advertisers=[OTHER, twin(advertiser, 2.0)], test=True)
    unconstrained = to_micro_units(row_of(free, "binder")["payment"])
    assert unconstrained >= 3, unconstrained
    budget = unconstrained // 3
    create(client, "bind-1", "binder", value_scale=2.0, budget={"total_micro": budget})

    bound = auction(client, 777, advertisers=[OTHER], campaigns=["bind-1"])
    row = row_of(bound, "binder")
    assert row["campaign_id"] == "bind-1" and row["pacing_multiplier"] == 1.0
    assert 0.0 < row["budget_multiplier"] < 1.0, row
    charged = to_micro_units(row["payment"])
    assert charged <= budget, (charged, budget)
    # the binding row is the unconstrained one times the multiplier; the other's rewards are untouched
    np.testing.assert_allclose(
        rewards_of(bound, "binder"), row["budget_multiplier"] * rewards_of(free, "binder"), rtol=1e-12
    )
    np.testing.assert_allclose(rewards_of(bound, OTHER["id"]), rewards_of(free, OTHER["id"]), atol=1e-12)
    record = assert_replays(client, bound)
    (kept,) = record["budgets"]
    assert kept["remaining_micro"] == budget and kept["budget_multiplier"] == row["budget_multiplier"]
    assert kept["reserved_micro"] == record["payments_micro"]["binder"] == charged and kept["rounds"] >= 1

    for seed in range(778, 790):  # spend what is left; then the campaign is out of budget
        answer = auction(client, seed, advertisers=[OTHER], campaigns=["bind-1"])
        if answer.get("excluded"):
            assert answer["excluded"] == [{"campaign_id": "bind-1", "reason": "out_of_budget"}]
            assert [r["id"] for r in answer["advertisers"]] == [OTHER["id"]]
            break
    else:
        pytest.fail("bind-1 never ran out of budget")
    stats = client.get("/campaigns/bind-1/stats").json()
    assert stats["spent_total_micro"] == budget and stats["remaining_total_micro"] == 0, stats
    deadline = time.monotonic() + 20
    while (paid := client.get("/ledger/advertisers/binder").json()["paid_micro"]) != budget:
        assert paid < budget and time.monotonic() < deadline, paid  # the embedded consumer applies
        time.sleep(0.2)


def test_a_reservation_refused_midway_is_fitted_again_and_the_others_reserved_again(
    client: TestClient, redis_process: RedisServerProcess
) -> None:
    """Invariant: when one campaign's reservation is refused because another auction took its budget
    after it was read, the auction is fitted again on the budgets read anew — the refused campaign
    lowered to what is left (here nothing: α = 0, charged 0) — and every campaign is reserved again
    under the same auction id, those whose first reservation was accepted (and released for the
    refit) included: the auction is served, never a 503 for budgets that fit. What the caller built
    while the refused reservations were in flight (`overlap`) is not the outcome returned; what it built
    for the accepted ones is that very object."""
    create(client, "race-a", "race-owner-a", budget={"total_micro": 10**9})
    create(client, "race-b", "race-owner-b", budget={"total_micro": 1_000})
    settings = client.app.state.settings  # type: ignore[attr-defined]
    rng = np.random.default_rng(3)
    log_ref = rng.normal(size=6)
    # rows: race-a, then race-b with small rewards (its payment fits the 1 000 micro it was read with)
    rewards = np.vstack([rng.normal(size=6), 0.02 * rng.normal(size=6)])
    _, free = mechanism.allocation_and_payments(rewards, log_ref, log_ref, 1.0)
    assert 0 < to_micro_units(float(free[1])) <= 1_000 and to_micro_units(float(free[0])) > 0, free

    built: list[Any] = []

    async def body() -> tuple[Any, list[Any]]:
        connection = aioredis.Redis.from_url(redis_process.url)
        try:
            budgets = BudgetLedger(connection, settings)
            resolver = CampaignResolver(CampaignStore(connection, settings), budgets, settings)
            participants = await resolver.resolve(AuctionRequest(query=QUERY, campaigns=["race-a", "race-b"]))
            assert [entry.remaining for entry in participants.entries] == [10**9, 1_000]
            now = int(time.time() * 1000)
            entry_b = participants.entries[1]
            other = Reservation("race-b", "another-auction", 1_000, entry_b.limits, entry_b.day, now + 60_000)
            assert await budgets.reserve_all([other], now) == [True]  # another auction took it all
            spender = BudgetSpender(budgets, settings)
            inputs = FitInputs(rewards=rewards, log_ref=log_ref, log_proposal=log_ref, tau=1.0, seed=5)
            fitted = await spender.fit_and_reserve(
                participants, inputs, "race-1", now, reserve=True, render=False, overlap=built.append
            )
            days = [entry.day for entry in participants.entries]
            return fitted, await budgets.states(["race-a", "race-b"], days, now)
        finally:
            await connection.aclose()

    fitted, (state_a, state_b) = asyncio.run(body())
    assert list(fitted.alphas) == [1.0, 0.0] and float(fitted.outcome.payments[1]) == 0.0
    assert len(built) == 2 and built[-1] is fitted and list(built[0].alphas) == [1.0, 1.0]
    charged_a = to_micro_units(float(fitted.outcome.payments[0]))
    assert charged_a > 0 and state_a.reserved_total == charged_a  # reserved again after its release
    assert state_b.reserved_total == 1_000  # the other auction's, nothing more
    assert [(r.campaign_id, r.reserved_micro) for r in fitted.records] == [
        ("race-a", charged_a),
        ("race-b", 0),
    ]


def test_a_billed_auction_steps_the_pacing_state_once_after_the_reply(
    client: TestClient, redis_process: RedisServerProcess
) -> None:
    """Invariant: in BILLING_MODE=auction a campaign's reservation is posted once its billing event is
    applied, with the pacing step the event carries (fixed before the auction), exactly once (μ = 1 →
    about 1 − ε when spend is far below target): the ledger consumer's post is the final one."""
    create(client, "step-1", "stepper", budget={"daily_micro": 10**12})
    raw = redis.Redis.from_url(redis_process.url, decode_responses=True)
    raw.hset(budget_key("step-1"), "mu", "1.0")
    answer = auction(client, 77, campaigns=["step-1"])
    assert row_of(answer, "stepper")["pacing_multiplier"] == 0.5
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats = client.get("/campaigns/step-1/stats").json()
        if stats["reserved_micro"] == 0 and raw.hexists("mosaic:ledger:applied", answer["auction_id"]):
            break
        time.sleep(0.05)
    assert stats["auctions_entered"] == 1 and stats["reserved_micro"] == 0
    assert stats["spent_total_micro"] == answer_micro(client, answer["auction_id"], "stepper")
    assert 0.79 < float(raw.hget(budget_key("step-1"), "mu") or 0) < 0.81
    assert stats["pacing_multiplier"] == 1.0 / (1.0 + float(raw.hget(budget_key("step-1"), "mu") or 0))


def answer_micro(client: TestClient, auction_id: str, advertiser_id: str) -> int:
    micro: int = client.get(f"/auctions/{auction_id}").json()["payments_micro"][advertiser_id]
    return micro


def test_an_auction_cancelled_while_its_reservations_are_in_flight_voids_them_after_they_land(
    client: TestClient, redis_process: RedisServerProcess
) -> None:
    """Invariant: cancelled while its reservations are in flight (here from inside `overlap`, the work
    done meanwhile, so the cancel lands exactly there), the fit lets them land before the cancel goes
    on, so the void the auction sends next releases them: nothing stays held until the expiry."""
    create(client, "cancel-1", "cancel-owner", budget={"total_micro": 10**9})
    settings = client.app.state.settings  # type: ignore[attr-defined]
    rng = np.random.default_rng(4)
    log_ref = rng.normal(size=6)
    rewards = rng.normal(size=(1, 6))

    async def body() -> tuple[bool, Any]:
        connection = aioredis.Redis.from_url(redis_process.url)
        try:
            budgets = BudgetLedger(connection, settings)
            resolver = CampaignResolver(CampaignStore(connection, settings), budgets, settings)
            participants = await resolver.resolve(AuctionRequest(query=QUERY, campaigns=["cancel-1"]))
            spender = BudgetSpender(budgets, settings)
            inputs = FitInputs(rewards=rewards, log_ref=log_ref, log_proposal=log_ref, tau=1.0, seed=5)
            now = int(time.time() * 1000)
            task = asyncio.current_task()
            assert task is not None
            cancelled = False
            try:
                await spender.fit_and_reserve(
                    participants,
                    inputs,
                    "cancel-a",
                    now,
                    reserve=True,
                    render=False,
                    overlap=lambda _: task.cancel(),
                )
            except asyncio.CancelledError:
                task.uncancel()
                cancelled = True
                held = (await budgets.states(["cancel-1"], [participants.entries[0].day], now))[0]
                assert held.reserved_total > 0  # it landed before the cancel went on
                await spender.void(participants, "cancel-a", now)
            day = participants.entries[0].day
            return cancelled, (await budgets.states(["cancel-1"], [day], now))[0]
        finally:
            await connection.aclose()

    cancelled, state = asyncio.run(body())
    assert cancelled and state.reserved_total == 0 and state.spent_total == 0


class _CountingLedger(BudgetLedger):
    """The real ledger, counting its reservation round trips."""

    reserve_calls = 0

    async def reserve_all(self, reservations: list[Reservation], now_ms: int) -> list[bool]:
        self.reserve_calls += 1
        return await super().reserve_all(reservations, now_ms)


def test_a_payment_within_its_hold_needs_no_reservation_on_the_reply_path(
    client: TestClient, redis_process: RedisServerProcess
) -> None:
    """Invariant (issue 33, pre-authorisation): the hold taken before the model work is a reservation
    under the auction's id; a payment within it is reserved already (no round trip after the mechanism),
    a payment above it grows it (one round trip, atomic on the campaign's key), and either way the
    campaign holds exactly max(hold, payment) until the post, which captures the payment."""
    create(client, "hold-a", "hold-owner-a", budget={"total_micro": 10**9})
    settings = client.app.state.settings  # type: ignore[attr-defined]
    rng = np.random.default_rng(11)
    log_ref = rng.normal(size=6)
    rewards = rng.normal(size=(1, 6))
    _, free = mechanism.allocation_and_payments(rewards, log_ref, log_ref, 1.0)
    payment = to_micro_units(float(free[0]))
    assert payment > 2

    async def body(auction_id: str, hold: int) -> tuple[int, int, int]:
        connection = aioredis.Redis.from_url(redis_process.url)
        try:
            budgets = _CountingLedger(connection, settings)
            resolver = CampaignResolver(CampaignStore(connection, settings), budgets, settings)
            participants = await resolver.resolve(AuctionRequest(query=QUERY, campaigns=["hold-a"]))
            now = int(time.time() * 1000)
            (entry,) = participants.entries
            before = (await budgets.states(["hold-a"], [entry.day], now))[0].reserved_total
            held = Reservation("hold-a", auction_id, hold, entry.limits, entry.day, now + 60_000)
            assert await budgets.reserve_all([held], now) == [True]
            calls = budgets.reserve_calls
            spender = BudgetSpender(budgets, settings)
            inputs = FitInputs(rewards=rewards, log_ref=log_ref, log_proposal=log_ref, tau=1.0, seed=5)
            fitted = await spender.fit_and_reserve(
                participants, inputs, auction_id, now, reserve=True, render=False, held=[hold]
            )
            assert fitted.reserved and to_micro_units(float(fitted.outcome.payments[0])) == payment
            after = (await budgets.states(["hold-a"], [entry.day], now))[0].reserved_total
            await budgets.void_all(["hold-a"], auction_id, now)
            return budgets.reserve_calls - calls, before, after
        finally:
            await connection.aclose()

    trips, before, after = asyncio.run(body("hold-1", 4 * payment))
    assert (trips, after - before) == (0, 4 * payment)  # within the hold: nothing on the reply path
    trips, before, after = asyncio.run(body("hold-2", payment // 2))
    assert (trips, after - before) == (1, payment)  # above it: grown to the payment, once


def test_hold_amount_is_a_few_mean_charges_at_most_what_remains(client: TestClient) -> None:
    """hold = ⌈BUDGET_HOLD_FACTOR × max(mean charge so far, pacing target ρ)⌉, at most what remains."""
    create(client, "hold-b", "hold-owner-b", budget={"total_micro": 1_000})
    settings = client.app.state.settings  # type: ignore[attr-defined]

    async def entry_of() -> Any:
        connection = aioredis.Redis.from_url(client.app.state.settings.redis_url)  # type: ignore[attr-defined]
        try:
            budgets = BudgetLedger(connection, settings)
            resolver = CampaignResolver(CampaignStore(connection, settings), budgets, settings)
            return (await resolver.resolve(AuctionRequest(query=QUERY, campaigns=["hold-b"]))).entries[0]
        finally:
            await connection.aclose()

    entry = asyncio.run(entry_of())
    assert entry.pacing_step is None  # a total budget only: no target per auction, no history
    assert hold_amount(entry, 4.0) == 0
    spent = replace(entry.state, spent_total=600, charged_total=3)  # mean charge 200
    assert hold_amount(replace(entry, state=spent), 1.5) == 300
    assert hold_amount(replace(entry, state=spent), 4.0) == 400  # capped: 1 000 − 600 remain
    assert hold_amount(replace(entry, state=spent), 4.0, share=0.1) == 40  # a tenth of what remains
