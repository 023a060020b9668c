"""Load test of the MOSAIC gateway: auctions built from the shared instances, plus ledger reads.

    locust -f loadtests/locustfile.py --headless -u 8 -r 2 -t 2m --host http://127.0.0.1:8000 --csv out/load

Environment:
    MOSAIC_INSTANCES          JSONL of {query, advertisers:[{id,name,description}]}
                              (default: ../shared/data/instances.jsonl beside the repository root)
    MOSAIC_API_KEY            bearer token (when the gateway has API_KEYS)
    LOCUST_SEED               seed of the traffic (default 1234); each simulated user draws from its
                              own generator seeded from it, so a run's requests are reproducible
    MOSAIC_LOAD_CANDIDATES    M of every auction (default 4)
    MOSAIC_LOAD_MAX_TOKENS    max_tokens of every auction (default 32)
    MOSAIC_LOAD_PROPOSALS     comma-separated proposals to draw from (default: context)
    MOSAIC_LOAD_WAIT_MIN_S / MOSAIC_LOAD_WAIT_MAX_S   think time between tasks (default 0.5 / 2)
    MOSAIC_LOAD_LEDGER_SETTLE_S   read an advertiser's ledger only this long after its auction
                              (default 5: the ledger consumer applies events asynchronously)

Every response is checked: status 200, the schema of the body (required fields and their types),
and for auctions that the payments add up to the revenue (within 1e-6) and that the advertisers are
the ones sent. Any violation is a locust failure, so `--exit-code-on-error 1` turns it into exit 1.
"""

from __future__ import annotations

import itertools
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

from locust import HttpUser, between, task

# locust puts this file's folder on sys.path.
from traffic import (
    build_auction,
    check_auction_response,
    check_ledger_advertiser,
    check_ledger_summary,
    env_float,
    env_int,
    json_object,
    load_instances,
    resolve_instances_path,
)


class _Shared:
    """State shared by the users of one locust process: instances and what auctions returned."""

    lock: ClassVar[threading.Lock] = threading.Lock()
    instances: ClassVar[list[dict[str, Any]] | None] = None
    auction_ids: ClassVar[deque[str]] = deque(maxlen=1000)
    # (time the auction finished, advertiser id)
    billed: ClassVar[deque[tuple[float, str]]] = deque(maxlen=5000)
    # The first ledger summary of the run: its conflict and dead-letter counters must not grow.
    summary_baseline: ClassVar[dict[str, int] | None] = None
    user_numbers: ClassVar[itertools.count[int]] = itertools.count()

    @classmethod
    def get_instances(cls) -> list[dict[str, Any]]:
        with cls.lock:
            if cls.instances is None:
                cls.instances = load_instances(resolve_instances_path())
            return cls.instances


def judge(response: Any, check: Callable[[dict[str, Any]], list[str]]) -> dict[str, Any] | None:
    """Mark a catch_response response: 200, a JSON object, and no problems from `check`.

    Returns the body when the response passed, else None (the failure is recorded with its reason).
    """
    if response.status_code != 200:
        response.failure(f"status {response.status_code}: {response.text[:300]!r}")
        return None
    body, error = json_object(response)
    if body is None:
        response.failure(error)
        return None
    problems = check(body)
    if problems:
        response.failure("; ".join(problems[:5]))
        return None
    response.success()
    return body


class AuctionUser(HttpUser):
    """Runs auctions (weight 10), reads audit records (1), the ledger summary (2) and advertiser
    accounts (2)."""

    wait_time = between(env_float("MOSAIC_LOAD_WAIT_MIN_S", 0.5), env_float("MOSAIC_LOAD_WAIT_MAX_S", 2.0))

    def on_start(self) -> None:
        seed = env_int("LOCUST_SEED", 1234)
        self.rng = random.Random(seed * 1_000_003 + next(_Shared.user_numbers))
        self.instances = _Shared.get_instances()
        self.candidates = env_int("MOSAIC_LOAD_CANDIDATES", 4)
        self.max_tokens = env_int("MOSAIC_LOAD_MAX_TOKENS", 32)
        self.proposals = [
            p.strip() for p in os.environ.get("MOSAIC_LOAD_PROPOSALS", "context").split(",") if p.strip()
        ]
        self.settle_s = env_float("MOSAIC_LOAD_LEDGER_SETTLE_S", 5.0)
        key = os.environ.get("MOSAIC_API_KEY", "").strip()
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    @task(10)
    def auction(self) -> None:
        payload = build_auction(
            self.rng,
            self.instances,
            candidates=self.candidates,
            max_tokens=self.max_tokens,
            proposals=self.proposals,
        )
        with self.client.post(
            "/auction", json=payload, headers=self.headers, name="POST /auction", catch_response=True
        ) as response:
            body = judge(response, lambda body: check_auction_response(body, payload))
            if body is None:
                return
            now = time.monotonic()
            with _Shared.lock:
                _Shared.auction_ids.append(body["auction_id"])
                _Shared.billed.extend((now, a["id"]) for a in body["advertisers"])

    @task(1)
    def audit_record(self) -> None:
        with _Shared.lock:
            ids = list(_Shared.auction_ids)
        if not ids:
            return
        auction_id = self.rng.choice(ids)
        with self.client.get(
            f"/auctions/{auction_id}", headers=self.headers, name="GET /auctions/[id]", catch_response=True
        ) as response:
            judge(
                response,
                lambda body: (
                    []
                    if body.get("auction_id") == auction_id
                    else [f"auction_id {body.get('auction_id')!r} != {auction_id!r}"]
                ),
            )

    @task(2)
    def ledger_summary(self) -> None:
        with self.client.get(
            "/ledger/summary", headers=self.headers, name="GET /ledger/summary", catch_response=True
        ) as response:
            with _Shared.lock:
                baseline = _Shared.summary_baseline
            body = judge(response, lambda body: check_ledger_summary(body, baseline))
            if body is not None and baseline is None:
                with _Shared.lock:
                    if _Shared.summary_baseline is None:
                        _Shared.summary_baseline = {k: body[k] for k in ("conflicts", "dead_letters")}

    @task(2)
    def ledger_advertiser(self) -> None:
        cutoff = time.monotonic() - self.settle_s
        with _Shared.lock:
            settled = [advertiser for (when, advertiser) in _Shared.billed if when <= cutoff]
        if not settled:
            return
        advertiser_id = self.rng.choice(settled)
        with self.client.get(
            f"/ledger/advertisers/{advertiser_id}",
            headers=self.headers,
            name="GET /ledger/advertisers/[id]",
            catch_response=True,
        ) as response:
            judge(response, lambda body: check_ledger_advertiser(body, advertiser_id))
