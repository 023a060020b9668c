"""Frequency caps are hard across gateways: real Redis, a real tiny-random worker, TWO real gateway
processes (`mosaic serve`) and the ledger consumer as its own process (`python -m app.ledger`).

A campaign capped at 3 auctions per hour and an uncapped one are registered; 16 asyncio clients send
64 `POST /auction`s for ONE user_id with both campaigns, alternating the gateways, all at once. In
BILLING_MODE=render every served reply is rendered (the cap counts at render). Exactly 3 auctions
entered and billed the capped campaign: its owner's ledger shows 3 auctions, its cap key 3 posted
and none pending; every other answer left it out `frequency_capped`.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.ledger.frequency import FrequencyHold, FrequencyLedger, user_hash
from app.ledger.redis_store import make_client
from tests.fixtures_redis import RedisServerProcess
from tests.fixtures_worker import WorkerProcess
from tests.integration.test_campaign_budgets import Stack, get_json, running_stack
from tests.integration.test_ledger import ledger_settings

CAP = 3
CLIENTS = 16
PER_CLIENT = 4
USER = "hot-user-7"
CAPPED = {"id": "fc-capped", "owner": "capped-owner", "name": "StrumMaster", "value_scale": 1.0,
          "description": "selling guitars, tuners, and learning materials", "budget": {"total_micro": 10**12},
          "frequency_cap": {"max_auctions": CAP, "per_seconds": 3600}}  # fmt: skip
OPEN = {"id": "fc-open", "owner": "open-owner", "name": "Chordify", "value_scale": 1.0,
        "description": "offering online guitar lessons", "budget": {"total_micro": 10**12}}  # fmt: skip


def payload(seed: int, user_id: str = USER) -> dict[str, Any]:
    return {"query": "Learning to play the guitar.", "candidates": 2, "max_tokens": 4, "seed": seed,
            "campaigns": [CAPPED["id"], OPEN["id"]], "user_id": user_id}  # fmt: skip


async def one_auction(http: httpx.AsyncClient, stack: Stack, client: int, n: int) -> dict[str, Any] | None:
    """One auction of the hot user (retried on 429/503 on the other gateway; a 504 served nothing)."""
    for attempt in range(200):
        url = stack.urls[(client + n + attempt) % 2]
        response = await http.post(f"{url}/auction", json=payload(1000 * client + n))
        if response.status_code == 504:
            return None
        if response.status_code in (429, 503):
            await asyncio.sleep(0.2)
            continue
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        if answer["billing"] == "pending":  # render mode: the reply is shown, bill it
            rendered = await http.post(f"{url}/auctions/{answer['auction_id']}/render")
            assert rendered.status_code == 200, rendered.text
        return answer
    raise AssertionError("no answer")


async def hammer(stack: Stack) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=60) as http:

        async def client_loop(client: int) -> list[dict[str, Any] | None]:
            return [await one_auction(http, stack, client, n) for n in range(PER_CLIENT)]

        results = await asyncio.gather(*(client_loop(c) for c in range(CLIENTS)))
    return [answer for answers in results for answer in answers if answer is not None]


async def settled_counts(stack: Stack, redis_url: str) -> tuple[int, int, dict[str, Any]]:
    """Once the ledger consumer applied everything and no slot is pending: the cap's posted and pending
    counts and the capped owner's ledger entry."""
    settings = ledger_settings(redis_url)
    client = make_client(redis_url, settings)
    hold = FrequencyHold(CAPPED["id"], user_hash(USER), CAP, 3600)
    deadline = time.monotonic() + 60
    try:
        while True:
            counted = await FrequencyLedger(client, settings).count(hold, int(time.time() * 1000))
            summary = await get_json(f"{stack.urls[0]}/ledger/summary")
            if counted.pending == 0 and summary["pending"] == summary["lag"] == 0:
                owner = await get_json(f"{stack.urls[0]}/ledger/advertisers/{CAPPED['owner']}")
                return counted.posted, counted.pending, owner
            assert time.monotonic() < deadline, (counted, summary)
            await asyncio.sleep(0.3)
    finally:
        await client.aclose()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["auction", "render"])
def test_a_cap_holds_across_two_gateways_and_sixteen_clients(
    tiny_worker: WorkerProcess, redis_server: RedisServerProcess, tmp_path: Path, mode: str
) -> None:
    """Invariant: whatever the gateways and the concurrency, a campaign capped at 3 per hour enters and
    is billed in exactly 3 auctions of one user_id (reserved before the model work, one atomic script
    per (campaign, user)); every other auction leaves it out `frequency_capped` while the uncapped
    campaign still enters; another user is not affected."""
    with running_stack(tiny_worker, redis_server, tmp_path, BILLING_MODE=mode) as stack:
        for spec in (CAPPED, OPEN):
            created = httpx.post(f"{stack.urls[0]}/campaigns", json=spec, timeout=30)
            assert created.status_code == 201, created.text
        begin = time.perf_counter()
        answers = asyncio.run(hammer(stack))
        served_s = time.perf_counter() - begin
        entered = [a for a in answers if any(r.get("campaign_id") == CAPPED["id"] for r in a["advertisers"])]
        capped = [
            a
            for a in answers
            if {"campaign_id": CAPPED["id"], "reason": "frequency_capped"} in (a.get("excluded") or [])
        ]
        assert len(entered) == CAP, [a["excluded"] for a in answers]
        assert len(capped) == len(answers) - CAP >= CLIENTS * PER_CLIENT // 2
        assert all(any(r.get("campaign_id") == OPEN["id"] for r in a["advertisers"]) for a in answers)
        posted, pending, owner = asyncio.run(settled_counts(stack, redis_server.url))
        assert (posted, pending, owner["auctions"]) == (CAP, 0, CAP), owner
        for url in stack.urls:  # still capped on both gateways; another user is not
            again = httpx.post(f"{url}/auction", json=payload(99), timeout=60).json()
            assert {"campaign_id": CAPPED["id"], "reason": "frequency_capped"} in again["excluded"]
        other = httpx.post(f"{stack.urls[1]}/auction", json=payload(98, "another-user"), timeout=60).json()
        assert any(r.get("campaign_id") == CAPPED["id"] for r in other["advertisers"]), other
        print(f"\nfrequency cap ({mode} mode): {len(answers)} auctions served in {served_s:.1f}s, "
              f"{len(entered)} entered the capped campaign, {len(capped)} left it out")  # fmt: skip
