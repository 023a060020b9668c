"""Campaign budgets are a hard limit, end to end: real Redis, a real tiny-random worker, TWO real gateway
processes (`mosaic serve`) and the ledger consumer as its own process (`python -m app.ledger`).

Two campaigns are registered with `POST /campaigns`, one with a small total budget and one with a small
daily budget (a different owner each); 16 asyncio clients run keyed `POST /auction`s with
`campaigns: [both]` (and sometimes an inline advertiser, who has no budget) against both gateways until
both budgets are used up, retrying a key (same key, same body) on a dropped connection, 409 or 503 as a
real client does. Mid-run one gateway is SIGKILLed and restarted on its port, and the ledger consumer
is SIGKILLed once and restarted. Then the reservations settle (posted by the ledger consumer when the
dead gateway's billing write stood, or expired by themselves when it did not) and the last micro-units
are spent sequentially. In BILLING_MODE=render a served charge holds its amount until it is rendered
or expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.ledger.events import to_micro_units
from tests.fixtures_billing import assert_billed_exactly_once, billed_count
from tests.fixtures_gateway import GatewayProcess, start_gateway_process
from tests.fixtures_redis import RedisServerProcess
from tests.fixtures_worker import WorkerProcess, free_port
from tests.integration.test_ledger_faults import ConsumerProcess

CLIENTS = 16
QUERY = "Learning to play the guitar."
TOTAL = {"id": "strings-total", "owner": "strummaster", "name": "StrumMaster",
         "description": "selling guitars, tuners, and learning materials"}  # fmt: skip
DAILY = {"id": "lessons-daily", "owner": "chordify", "name": "Chordify",
         "description": "offering online guitar lessons", "value_scale": 2.0}  # fmt: skip
INLINE = {"id": "picks-inline", "name": "PickPal", "description": "guitar picks in every gauge"}
RESERVATION_TTL_S = 10
RENDER_WINDOW_S = 3
# A short deadline, so the lease a killed gateway leaves on a key (deadline + append timeout + 2 s)
# lapses soon; no embedded consumer: the ledger consumer is its own process, SIGKILLed once.
GATEWAY_ENV = {
    "AUCTION_DEADLINE_S": "6",
    "BILLING_APPEND_TIMEOUT_S": "1",
    "BILLING_BLOCK_MS": "100",
    "BILLING_CLAIM_IDLE_MS": "500",
    "BILLING_EMBEDDED_CONSUMER": "false",
    "BUDGET_RESERVATION_TTL_S": str(RESERVATION_TTL_S),
    "RENDER_WINDOW_S": str(RENDER_WINDOW_S),
}
CONSUMER_SETTINGS: dict[str, Any] = {
    "billing_block_ms": 100,
    "billing_claim_idle_ms": 500,
    "budget_reservation_ttl_s": RESERVATION_TTL_S,
    "render_window_s": RENDER_WINDOW_S,
}


def evening_zone(now: datetime | None = None) -> str:
    """A fixed-offset IANA zone where it is about 22:00 now: the daily campaign's day cannot change
    during the test (its budget is per local day), and 11/12 of its day has passed, so pacing holds
    back little until its daily budget is nearly spent (a flat traffic curve)."""
    hour = (now or datetime.now(UTC)).hour
    offset = (22 - hour + 12) % 24 - 12  # local = UTC + offset ≡ 22 h, offset in [-12, 11]
    return "UTC" if offset == 0 else f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"  # POSIX sign


def campaign_payload(spec: dict[str, Any], budget: dict[str, int], **extra: Any) -> dict[str, Any]:
    return {**spec, "value_scale": spec.get("value_scale", 1.0), "budget": budget, **extra}


def inline_twin(spec: dict[str, Any]) -> dict[str, Any]:
    """The campaign's advertiser given inline (id = owner): it renders the same prompts."""
    return {"id": spec["owner"], "name": spec["name"], "description": spec["description"],
            "value_scale": spec.get("value_scale", 1.0)}  # fmt: skip


def auction_payload(seed: int, campaigns: list[str], inline: bool) -> dict[str, Any]:
    payload: dict[str, Any] = {"query": QUERY, "candidates": 2, "max_tokens": 4, "seed": seed}
    payload["campaigns"] = campaigns
    if inline:
        payload["advertisers"] = [INLINE]
    return payload


def run_reconcile(redis_url: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    """`mosaic ledger reconcile` as a process (cwd outside the repository: no developer's .env)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BILLING_", "REDIS_", "BUDGET_"))}
    repo = Path(__file__).resolve().parents[2]
    env.update(PYTHONPATH=str(repo), REDIS_URL=redis_url, DATA_DIR=str(workdir / "data"), LOG_JSON="false")
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "ledger", "reconcile"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@dataclass
class Stack:
    """Two gateways on fixed ports (a restart reuses its port) and one ledger consumer process."""

    worker_url: str
    redis_url: str
    workdir: Path
    env: dict[str, str]
    ports: list[int] = field(default_factory=lambda: [free_port(), free_port()])
    gateways: list[GatewayProcess] = field(default_factory=list)
    consumer: ConsumerProcess | None = None

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    def start_gateway(self, index: int) -> GatewayProcess:
        return start_gateway_process(
            self.worker_url, self.redis_url, self.workdir, port=self.ports[index], **self.env
        )

    def start_consumer(self) -> None:
        settings = {**CONSUMER_SETTINGS, "billing_mode": self.env.get("BILLING_MODE", "auction")}
        self.consumer = ConsumerProcess(self.redis_url, "budget-test", self.workdir, **settings)
        assert self.consumer.wait_for_line("started", timeout_s=60), "".join(self.consumer.log)

    def stop(self) -> None:
        for gateway in self.gateways:
            gateway.stop()
        if self.consumer is not None:
            self.consumer.kill()


@contextlib.contextmanager
def running_stack(
    worker: WorkerProcess, redis: RedisServerProcess, workdir: Path, **env: str
) -> Iterator[Stack]:
    stack = Stack(worker.url, redis.url, workdir, {**GATEWAY_ENV, **env})
    try:
        stack.gateways = [stack.start_gateway(0), stack.start_gateway(1)]
        stack.start_consumer()
        yield stack
    finally:
        stack.stop()


@dataclass
class Run:
    """What the clients saw: every 200 (first answers and replays), by auction id; the rendered ones."""

    stack: Stack
    render: bool
    rng: random.Random
    served: dict[str, dict[str, Any]] = field(default_factory=dict)
    rendered: set[str] = field(default_factory=set)
    expired_unrendered: set[str] = field(default_factory=set)
    retries: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    render_share: float = 0.8  # render mode: the share of replies shown (rendered); the rest expire
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def note(self, what: str) -> None:
        self.retries[what] = self.retries.get(what, 0) + 1

    async def auction(self, http: httpx.AsyncClient, client: int, key: str, payload: dict[str, Any]) -> Any:
        """One keyed auction, retried (same key, same body, either gateway) until a 200 or a stored 504."""
        deadline = time.monotonic() + 90
        for attempt in range(10_000):
            assert time.monotonic() < deadline, f"key {key} never answered: {self.retries}"
            url = self.stack.urls[(client + attempt) % 2]
            self.in_flight += 1
            try:
                response = await http.post(f"{url}/auction", json=payload, headers={"Idempotency-Key": key})
            except httpx.TransportError as error:
                self.note(type(error).__name__)
                await asyncio.sleep(0.2)
                continue
            finally:
                self.in_flight -= 1
            if response.status_code == 504:  # the deadline passed (a busy CPU): stored, billed nothing
                self.note("504")
                return None
            if response.status_code >= 500 and response.headers.get("idempotent-replayed") == "true":
                self.note(
                    f"stored {response.status_code}"
                )  # the key's outcome: served nothing, billed nothing
                return None
            if response.status_code != 200:
                assert response.status_code in (409, 429, 503), response.text
                self.note(f"{response.status_code} {str(response.json().get('detail'))[-90:]}")
                await asyncio.sleep(0.3)
                continue
            answer: dict[str, Any] = response.json()
            self.served[answer["auction_id"]] = answer
            if answer["billing"] == "pending" and self.rng.random() < self.render_share:
                await self.render_it(http, client, answer["auction_id"])
            return answer
        raise AssertionError("unreachable")

    async def render_it(self, http: httpx.AsyncClient, client: int, auction_id: str) -> None:
        """Render mode: the reply was shown: bill it (retried like the auction, on either gateway)."""
        for attempt in range(200):
            url = self.stack.urls[(client + attempt) % 2]
            try:
                response = await http.post(f"{url}/auctions/{auction_id}/render")
            except httpx.TransportError:
                await asyncio.sleep(0.2)
                continue
            if response.status_code == 200:
                self.rendered.add(auction_id)
                return
            if response.status_code == 410:  # its window passed while a gateway was down
                self.expired_unrendered.add(auction_id)
                return
            assert response.status_code == 503, response.text
            await asyncio.sleep(0.3)
        raise AssertionError(f"render of {auction_id} never answered")


def out_of_budget(answer: dict[str, Any] | None, campaign_ids: list[str]) -> bool:
    if answer is None:
        return False
    reasons = {x["campaign_id"]: x["reason"] for x in answer.get("excluded") or []}
    return all(reasons.get(cid) == "out_of_budget" for cid in campaign_ids)


async def client_loop(run: Run, client: int, campaign_ids: list[str]) -> int:
    """Keyed auctions until one answers both campaigns `out_of_budget` (or the run is stopped)."""
    async with httpx.AsyncClient(timeout=30) as http:
        for n in range(10_000):
            if run.stop.is_set():
                return n
            payload = auction_payload(10_000 * client + n, campaign_ids, inline=run.rng.random() < 0.3)
            answer = await run.auction(http, client, f"c{client}-{n}", payload)
            if out_of_budget(answer, campaign_ids):
                return n + 1
    return 10_000


async def get_json(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(url)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


async def faults(run: Run, campaign_id: str, budget: int) -> dict[str, int]:
    """Once 30 % of the total budget is spent or held: SIGKILL gateway 1 (clients mid-request) and
    restart it on its port; then SIGKILL the ledger consumer and restart it under the same name."""
    stack = run.stack
    while True:
        stats = await get_json(f"{stack.urls[0]}/campaigns/{campaign_id}/stats")
        if stats["spent_total_micro"] + stats["reserved_micro"] >= 0.3 * budget or run.stop.is_set():
            break
        await asyncio.sleep(0.05)
    in_flight = run.in_flight
    stack.gateways[1].kill()
    await asyncio.sleep(0.3)  # the clients fail over to gateway 0 meanwhile
    assert stack.consumer is not None
    stack.consumer.kill()
    stack.gateways[1] = await asyncio.to_thread(stack.start_gateway, 1)
    await asyncio.to_thread(stack.start_consumer)
    return {"in_flight_at_kill": in_flight}


async def settle(run: Run, limits: dict[str, int], timeout_s: float) -> dict[str, dict[str, Any]]:
    """Wait until no reservation is held (posted by a gateway or the consumer, voided, or expired) and
    the consumer has applied every billing event; the campaigns' stats then."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = {cid: await get_json(f"{run.stack.urls[0]}/campaigns/{cid}/stats") for cid in limits}
        summary = await get_json(f"{run.stack.urls[0]}/ledger/summary")
        if (
            all(s["reserved_micro"] == 0 for s in stats.values())
            and summary["pending"] == summary["lag"] == 0
        ):
            return stats
        assert time.monotonic() < deadline, (stats, summary)
        await asyncio.sleep(0.3)


async def use_up(run: Run, limits: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Sequential auctions at raised bids until nothing is left of either budget (what released
    reservations gave back is spent again, a fit charging at most what remains), then the stats."""
    campaign_ids = list(limits)
    run.render_share = 1.0
    async with httpx.AsyncClient(timeout=30) as http:
        # the advertisers raise their bids a hundredfold (PATCH, If-Match): each auction's charge then
        # binds, and the fit charges what is left; pacing alone (α down to 1/(1+μ̄) on the daily
        # campaign once it is ahead of its target) would take thousands of auctions to get there
        for spec in (TOTAL, DAILY):
            current = await http.get(f"{run.stack.urls[0]}/campaigns/{spec['id']}")
            patched = await http.patch(
                f"{run.stack.urls[1]}/campaigns/{spec['id']}",
                json={"value_scale": 100 * current.json()["value_scale"]},
                headers={"If-Match": current.headers["ETag"]},
            )
            assert patched.status_code == 200, patched.text
        for n in range(40):
            answer = await run.auction(
                http, n, f"drain-{n}", auction_payload(90_000 + n, campaign_ids, False)
            )
            if run.render:
                await settle(run, limits, RENDER_WINDOW_S + 15)
            if out_of_budget(answer, campaign_ids):
                return await settle(run, limits, RESERVATION_TTL_S + RENDER_WINDOW_S + 15)
    stats = {cid: await get_json(f"{run.stack.urls[0]}/campaigns/{cid}/stats") for cid in limits}
    raise AssertionError(f"the budgets were never used up: {stats}; last answer {answer}")


def unconstrained_payments(url: str, seed: int, specs: list[dict[str, Any]]) -> dict[str, int]:
    """The unconstrained payments (micro) of the campaigns' advertisers given inline, in the order the
    campaign auction lists them, in a test auction (never billed): the campaign auction's with the
    same seed, had it no budget."""
    payload = {"query": QUERY, "candidates": 2, "max_tokens": 4, "seed": seed, "test": True,
               "advertisers": [inline_twin(spec) for spec in specs]}  # fmt: skip
    response = httpx.post(f"{url}/auction", json=payload, timeout=60)
    assert response.status_code == 200, response.text
    return {row["id"]: to_micro_units(row["payment"]) for row in response.json()["advertisers"]}


def largest_payments(url: str, seeds: list[int]) -> dict[str, int]:
    """The campaigns' advertisers' largest unconstrained payment (micro) over `seeds`, both bidding."""
    paid = [unconstrained_payments(url, seed, [TOTAL, DAILY]) for seed in seeds]
    return {owner: max(p[owner] for p in paid) for owner in (TOTAL["owner"], DAILY["owner"])}


def register(url: str, payload: dict[str, Any]) -> None:
    response = httpx.post(f"{url}/campaigns", json=payload, timeout=30)
    assert response.status_code == 201, response.text


async def run_clients(
    stack: Stack, render: bool, limits: dict[str, int]
) -> tuple[Run, dict[str, int], float]:
    run = Run(stack=stack, render=render, rng=random.Random(33))
    started = time.monotonic()
    ids = list(limits)
    fault_task = asyncio.create_task(faults(run, TOTAL["id"], limits[TOTAL["id"]]))
    counts = await asyncio.wait_for(
        asyncio.gather(*(client_loop(run, client, ids) for client in range(CLIENTS))), timeout=120
    )
    run.stop.set()
    fault = await asyncio.wait_for(fault_task, timeout=120)
    return run, {**fault, "auctions": sum(counts)}, time.monotonic() - started


def check_budgets(
    stack: Stack, run: Run, limits: dict[str, int], stats: dict[str, dict[str, Any]], billed_before: int
) -> None:
    # a no-fill (both campaigns out of budget, nobody inline) is served and never billed (issue 34)
    no_fills = {i for i, answer in run.served.items() if "no_fill" in answer}
    assert all(run.served[i]["no_fill"]["reason"] == "all_out_of_budget" for i in no_fills)
    served_ids = run.rendered if run.render else set(run.served) - no_fills
    for campaign_id, owner, limit in ((TOTAL["id"], TOTAL["owner"], limits[TOTAL["id"]]),
                                      (DAILY["id"], DAILY["owner"], limits[DAILY["id"]])):  # fmt: skip
        account = httpx.get(f"{stack.urls[0]}/ledger/advertisers/{owner}", params={"limit": 1}).json()
        paid = account["paid_micro"]
        # every billed auction was answered (keys retried to a 200): the charges the clients saw add up
        seen = sum(
            to_micro_units(row["payment"])
            for auction_id in served_ids
            for row in run.served[auction_id]["advertisers"]
            if row["id"] == owner
        )
        assert 0 < paid <= limit, (campaign_id, paid, limit)
        assert paid == seen == stats[campaign_id]["spent_total_micro"], (campaign_id, paid, seen, stats)
        assert stats[campaign_id]["spent_today_micro"] == paid  # one (local) day
        left = "remaining_total_micro" if campaign_id == TOTAL["id"] else "remaining_today_micro"
        assert stats[campaign_id][left] == 0 and stats[campaign_id]["reserved_micro"] == 0, stats
        assert account["auctions"] == stats[campaign_id]["auctions_entered"]
    assert_billed_exactly_once(stack.redis_url, served_ids, billed_before, timeout_s=30)
    reconciled = run_reconcile(stack.redis_url, stack.workdir)
    assert reconciled.returncode == 0, reconciled.stdout[-4000:] + reconciled.stderr[-2000:]


def spend_figures(run: Run) -> dict[str, Any]:
    """Per campaign: auctions it was charged in, lowered to fit (0 < β < 1), dropped (β = 0), and the
    lowest pacing multiplier α the clients were answered."""
    figures: dict[str, Any] = {}
    for spec in (TOTAL, DAILY):
        rows = [
            row
            for answer in run.served.values()
            for row in answer["advertisers"]
            if row["id"] == spec["owner"]
        ]
        figures[spec["id"]] = {
            "charged": sum(to_micro_units(row["payment"]) > 0 for row in rows),
            "lowered": sum(0 < row["budget_multiplier"] < 1 for row in rows),
            "dropped": sum(row["budget_multiplier"] == 0 for row in rows),
            "min_alpha": round(min((row["pacing_multiplier"] for row in rows), default=1.0), 3),
        }
    return figures


def check_later_auctions(stack: Stack, campaign_ids: list[str]) -> None:
    """After the budgets are used up, every gateway leaves both campaigns out (`out_of_budget`); with
    nobody else bidding the reply is organic: no advertiser, nothing charged."""
    for url in stack.urls:
        answer = httpx.post(f"{url}/auction", json=auction_payload(7, campaign_ids, False), timeout=60).json()
        assert out_of_budget(answer, campaign_ids), answer
        assert answer["advertisers"] == [] and answer["revenue"] == 0.0, answer
        with_inline = httpx.post(
            f"{url}/auction", json=auction_payload(8, campaign_ids, True), timeout=60
        ).json()
        assert out_of_budget(with_inline, campaign_ids), with_inline
        assert [row["id"] for row in with_inline["advertisers"]] == [INLINE["id"]]


def budgets_hold_under_concurrency_and_kills(
    worker: WorkerProcess, redis: RedisServerProcess, workdir: Path, mode: str
) -> dict[str, Any]:
    render = mode == "render"
    with running_stack(worker, redis, workdir, BILLING_MODE=mode) as stack:
        largest = largest_payments(stack.urls[0], list(range(1, 7)))
        # room for ~20 of the largest charges on the total budget, ~10 on the daily one: used up over
        # a few hundred auctions, mid-run (payments are heavy-tailed: most are far below the largest)
        limits = {TOTAL["id"]: max(50, 20 * largest[TOTAL["owner"]]),
                  DAILY["id"]: max(50, 10 * largest[DAILY["owner"]])}  # fmt: skip
        register(stack.urls[0], campaign_payload(TOTAL, {"total_micro": limits[TOTAL["id"]]}))
        register(
            stack.urls[1],
            campaign_payload(
                DAILY, {"daily_micro": limits[DAILY["id"]]}, schedule={"time_zone": evening_zone()}
            ),
        )
        billed_before = billed_count(redis.url)
        run, figures, served_s = asyncio.run(run_clients(stack, render, limits))

        async def finish() -> dict[str, dict[str, Any]]:
            await settle(run, limits, RESERVATION_TTL_S + RENDER_WINDOW_S + 20)
            return await use_up(run, limits)

        stats = asyncio.run(finish())
        check_budgets(stack, run, limits, stats, billed_before)
        check_later_auctions(stack, list(limits))
        assert figures["in_flight_at_kill"] >= 1, figures  # the kill landed mid-request
        assert sum(run.retries.get(k, 0) for k in ("ConnectError", "RemoteProtocolError", "ReadError")) >= 1
        return {**figures, "served": len(run.served), "rendered": len(run.rendered), "served_s": served_s,
                "limits": limits, "retries": run.retries, **spend_figures(run)}  # fmt: skip


@pytest.mark.timeout(240)
def test_budgets_hold_with_two_gateways_sixteen_clients_and_sigkills(
    tiny_worker: WorkerProcess, redis_server: RedisServerProcess, tmp_path: Path
) -> None:
    """Invariant (BILLING_MODE=auction): for each campaign, what the ledger charged its owner is at most
    its budget (total, or today's for the daily one) to the micro-unit, and equals the campaign's
    `spent_total_micro` and the sum of the payments the clients were answered; no reservation is left
    held; every served auction is billed exactly once; `mosaic ledger reconcile` exits 0 (spend
    counters and reservations against the ledger included); afterwards every gateway answers both
    campaigns `excluded: out_of_budget` — through two gateways, 16 clients, a SIGKILLed gateway and a
    SIGKILLed ledger consumer."""
    figures = budgets_hold_under_concurrency_and_kills(tiny_worker, redis_server, tmp_path, "auction")
    print(f"\ncampaign budgets (auction mode): {figures}")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_budgets_hold_in_render_mode_under_concurrency_and_sigkills(
    tiny_worker: WorkerProcess, redis_server: RedisServerProcess, tmp_path: Path
) -> None:
    """Invariant (BILLING_MODE=render): the same as in auction mode, where a served auction's charge is
    held on its campaign's budget until it is rendered (billed) or its window passes (released), so
    what is rendered never passes the budget; only rendered auctions are billed, each exactly once."""
    figures = budgets_hold_under_concurrency_and_kills(tiny_worker, redis_server, tmp_path, "render")
    print(f"\ncampaign budgets (render mode): {figures}")


@pytest.mark.timeout(120)
def test_pending_render_charges_hold_their_amount_until_billed_or_expired(
    tiny_worker: WorkerProcess, redis_server: RedisServerProcess, tmp_path: Path
) -> None:
    """Invariant (BILLING_MODE=render): a pending charge holds its amount on the campaign's budget — a
    second auction cannot take it (`out_of_budget`) — until it is rendered (then spent, charged once)
    or its window passes (then released: the campaign bids again and is charged nothing for it)."""
    env = {**GATEWAY_ENV, "BILLING_MODE": "render", "BILLING_EMBEDDED_CONSUMER": "true"}
    gateway = start_gateway_process(tiny_worker.url, redis_server.url, tmp_path, **env)
    try:
        url = gateway.url
        held = unconstrained_payments(url, 41, [TOTAL])[TOTAL["owner"]]
        freed = unconstrained_payments(url, 42, [DAILY])[DAILY["owner"]]
        assert held >= 1 and freed >= 1, (held, freed)
        register(url, campaign_payload(TOTAL, {"total_micro": held}))  # exactly one charge of seed 41
        register(url, campaign_payload(DAILY, {"daily_micro": freed}, schedule={"time_zone": evening_zone()}))

        def auction(seed: int, campaign_id: str) -> dict[str, Any]:
            response = httpx.post(
                f"{url}/auction", json=auction_payload(seed, [campaign_id], False), timeout=60
            )
            assert response.status_code == 200, response.text
            answer: dict[str, Any] = response.json()
            return answer

        def stats(campaign_id: str) -> dict[str, Any]:
            return httpx.get(f"{url}/campaigns/{campaign_id}/stats").json()

        first = auction(41, TOTAL["id"])
        assert first["billing"] == "pending" and first["advertisers"][0]["budget_multiplier"] == 1.0, first
        assert to_micro_units(first["advertisers"][0]["payment"]) == held
        assert stats(TOTAL["id"])["reserved_micro"] == held
        assert stats(TOTAL["id"])["remaining_total_micro"] == 0
        assert out_of_budget(auction(43, TOTAL["id"]), [TOTAL["id"]])  # the pending charge holds it
        rendered = httpx.post(f"{url}/auctions/{first['auction_id']}/render")
        assert rendered.status_code == 200 and rendered.json()["billed_now"] is True
        deadline = time.monotonic() + 20
        while stats(TOTAL["id"])["spent_total_micro"] != held:  # the consumer posts it
            assert time.monotonic() < deadline, stats(TOTAL["id"])
            time.sleep(0.2)
        assert stats(TOTAL["id"])["reserved_micro"] == 0
        assert out_of_budget(auction(44, TOTAL["id"]), [TOTAL["id"]])  # spent now, still used up

        unshown = auction(42, DAILY["id"])
        assert unshown["billing"] == "pending"
        assert stats(DAILY["id"])["reserved_micro"] == freed
        assert out_of_budget(auction(45, DAILY["id"]), [DAILY["id"]])
        deadline = time.monotonic() + RENDER_WINDOW_S + 15
        while stats(DAILY["id"])["reserved_micro"] != 0:  # its window passes: expired, released
            assert time.monotonic() < deadline, stats(DAILY["id"])
            time.sleep(0.3)
        assert httpx.get(f"{url}/auctions/{unshown['auction_id']}").json()["billing"] == "expired"
        assert httpx.post(f"{url}/auctions/{unshown['auction_id']}/render").status_code == 410
        assert stats(DAILY["id"])["spent_total_micro"] == 0
        assert stats(DAILY["id"])["remaining_today_micro"] == freed
        again = auction(42, DAILY["id"])  # the released amount is the campaign's again
        assert [row["campaign_id"] for row in again["advertisers"]] == [DAILY["id"]], again
        assert to_micro_units(again["advertisers"][0]["payment"]) == freed

        paid = {
            owner: httpx.get(f"{url}/ledger/advertisers/{owner}").json()["paid_micro"]
            for owner in (TOTAL["owner"], DAILY["owner"])
        }
        assert paid == {TOTAL["owner"]: held, DAILY["owner"]: 0}, paid
    finally:
        gateway.stop()
    reconciled = run_reconcile(redis_server.url, tmp_path)
    assert reconciled.returncode == 0, reconciled.stdout[-4000:] + reconciled.stderr[-2000:]
