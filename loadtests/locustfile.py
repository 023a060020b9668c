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

Requests go through the project's typed client (`mosaic_client.MosaicClient`, retries off so that
every failure is counted; each auction carries an Idempotency-Key); each call is reported to locust
as a request event. Every response is checked: status 200, the schema of the body (the API's
pydantic models; required fields and their types), and for auctions that the payments add up to
the revenue (within 1e-6) and that the advertisers are the ones sent. Any violation is a locust
failure, so `--exit-code-on-error 1` turns it into exit 1.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from locust import User, between, task
from pydantic import ValidationError

# locust puts this file's folder on sys.path.
from traffic import (
    build_auction,
    check_auction_response,
    check_ledger_advertiser,
    check_ledger_summary,
    env_float,
    env_int,
    load_instances,
    resolve_instances_path,
)

# The typed client is installed with the project (`pip install -e .`).
from mosaic_client import MosaicClient, MosaicError


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


class Call:
    """One timed API call: `success()` / `failure(reason)` report it to locust (once)."""

    def __init__(self, user: User, name: str) -> None:
        self.user = user
        self.name = name
        self.started = time.perf_counter()
        self.reported = False

    def _fire(self, exception: Exception | None, length: int = 0) -> None:
        if self.reported:
            return
        self.reported = True
        self.user.environment.events.request.fire(
            request_type=self.name.split(" ", 1)[0],
            name=self.name,
            response_time=(time.perf_counter() - self.started) * 1000,
            response_length=length,
            exception=exception,
            context={},
        )

    def success(self) -> None:
        self._fire(None)

    def failure(self, reason: str) -> None:
        self._fire(AssertionError(reason))


@contextlib.contextmanager
def call(user: User, name: str) -> Iterator[Call]:
    """Time a client call; a MosaicError (any non-2xx, a transport failure) is a locust failure."""
    timed = Call(user, name)
    try:
        yield timed
    except MosaicError as error:
        timed.failure(str(error)[:300])
    except ValidationError as error:  # the answer is not the model the API declares
        timed.failure(f"schema: {str(error)[:300]}")
    else:
        timed.success()


def judge(timed: Call, body: dict[str, Any], check: Callable[[dict[str, Any]], list[str]]) -> bool:
    """Report `body` as a failure when `check` finds problems; True when it passed."""
    problems = check(body)
    if problems:
        timed.failure("; ".join(problems[:5]))
        return False
    return True


class AuctionUser(User):
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
        key = os.environ.get("MOSAIC_API_KEY", "").strip() or None
        self.mosaic = MosaicClient(self.host or "http://127.0.0.1:8000", api_key=key, retries=0)

    def on_stop(self) -> None:
        self.mosaic.close()

    @task(10)
    def auction(self) -> None:
        payload = build_auction(
            self.rng,
            self.instances,
            candidates=self.candidates,
            max_tokens=self.max_tokens,
            proposals=self.proposals,
        )
        with call(self, "POST /auction") as timed:
            answer = self.mosaic.auction(payload["query"], payload["advertisers"], **_fields(payload))
            body = answer.model_dump(mode="json", exclude_none=True)
            if not judge(timed, body, lambda body: check_auction_response(body, payload)):
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
        with call(self, "GET /auctions/[id]") as timed:
            record = self.mosaic.get_auction(auction_id)
            if record.auction_id != auction_id:
                timed.failure(f"auction_id {record.auction_id!r} != {auction_id!r}")

    @task(2)
    def ledger_summary(self) -> None:
        with call(self, "GET /ledger/summary") as timed:
            with _Shared.lock:
                baseline = _Shared.summary_baseline
            body = self.mosaic.ledger_summary()
            if judge(timed, body, lambda body: check_ledger_summary(body, baseline)) and baseline is None:
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
        with call(self, "GET /ledger/advertisers/[id]") as timed:
            body = self.mosaic.advertiser_account(advertiser_id)
            judge(timed, body, lambda body: check_ledger_advertiser(body, advertiser_id))


def _fields(payload: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in payload.items() if key not in ("query", "advertisers")}
