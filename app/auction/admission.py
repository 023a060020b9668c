"""Admission control of the gateway: bounded concurrency, bounded worker tokens, a bounded wait.

An auction is admitted before any model work when, with it, no limit is passed: concurrent auctions
(``max_concurrent``), concurrent auctions of one API key (``max_per_key``) and the worker tokens the
running auctions may cost (``max_tokens_in_flight``; an auction's cost is estimated from its request,
`auction_token_cost`). Otherwise it waits in a FIFO of at most ``max_waiting`` for at most
``max_wait_s``; a full queue or a wait past the limit is refused (`AdmissionRefusedError` → 429 with
``Retry-After``): never an unbounded queue.

Fairness (no request starves): waiters are admitted in arrival order; the scan on every release stops
at the first waiter blocked by a *global* limit (concurrency or tokens), so small auctions cannot
overtake a large one forever. A waiter blocked only by its own key's limit is skipped, so one busy key
cannot hold up the others. An auction is always admitted when nothing else runs, whatever its cost, so
the token limit can never refuse a valid request for good.

Pure asyncio; knows nothing of HTTP. Imports `app.auction.observers` only: what it reports goes to the
`AdmissionObserver` it is given (the gateway's Prometheus `AdmissionMetrics`); see docs/DESIGN.md.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from app.auction.observers import AdmissionObserver, NoopAdmissionObserver


@dataclass(frozen=True)
class AdmissionLimits:
    max_concurrent: int
    max_per_key: int
    max_tokens_in_flight: int
    max_waiting: int
    max_wait_s: float


class AdmissionRefusedError(Exception):
    """Refused before any model work; ``reason`` names the limit, ``retry_after_s`` is the advice."""

    def __init__(self, reason: str, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = retry_after_s


def auction_token_cost(candidates: int, max_tokens: int, num_advertisers: int, proposal: str) -> int:
    """Worker tokens an auction may cost at most, from its request: M replies generated, then scored under
    the reference and every advertiser (and the other proposal for the mixture). Prompts are not known
    before tokenize; the reply tokens dominate and bound the decode work."""
    scorings = 1 + num_advertisers + (1 if proposal == "mixture" else 0)
    return candidates * max_tokens * (1 + scorings)


@dataclass
class _Waiter:
    key: str
    cost: int
    admitted: asyncio.Future[None]
    enqueued_at: float = field(default_factory=time.monotonic)


class AdmissionController:
    def __init__(self, limits: AdmissionLimits, observer: AdmissionObserver | None = None) -> None:
        self.limits = limits
        self.observer = observer or NoopAdmissionObserver()
        self._in_flight = 0
        self._per_key: dict[str, int] = {}
        self._tokens = 0
        self._waiters: deque[_Waiter] = deque()
        self._recent_seconds = 1.0  # EWMA of admitted auctions' durations, for Retry-After

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _blocked_globally(self, cost: int) -> bool:
        if self._in_flight == 0:
            return False
        return (
            self._in_flight >= self.limits.max_concurrent
            or self._tokens + cost > self.limits.max_tokens_in_flight
        )

    def _blocked_by_key(self, key: str) -> bool:
        return self._per_key.get(key, 0) >= self.limits.max_per_key

    def _take(self, key: str, cost: int) -> None:
        self._in_flight += 1
        self._per_key[key] = self._per_key.get(key, 0) + 1
        self._tokens += cost
        self._publish()

    def _give_back(self, key: str, cost: int, seconds: float) -> None:
        self._in_flight -= 1
        self._per_key[key] -= 1
        if not self._per_key[key]:
            del self._per_key[key]
        self._tokens -= cost
        self._recent_seconds = 0.8 * self._recent_seconds + 0.2 * seconds
        self._admit_waiters()
        self._publish()

    def _admit_waiters(self) -> None:
        for waiter in list(self._waiters):
            if waiter.admitted.done():  # timed out or cancelled meanwhile
                self._waiters.remove(waiter)
                continue
            if self._blocked_globally(waiter.cost):
                break  # FIFO for the global limits: nobody overtakes this waiter
            if self._blocked_by_key(waiter.key):
                continue
            self._waiters.remove(waiter)
            self._take(waiter.key, waiter.cost)
            waiter.admitted.set_result(None)

    def _publish(self) -> None:
        self.observer.admission_load(self._in_flight, len(self._waiters), self._tokens)

    def retry_after_s(self) -> int:
        """Advice for a refused client: the expected time for the running and waiting auctions to drain."""
        backlog = (self._in_flight + len(self._waiters)) / max(self.limits.max_concurrent, 1)
        return max(1, math.ceil(self._recent_seconds * backlog))

    def _refuse(self, reason: str, message: str) -> AdmissionRefusedError:
        self.observer.admission_refused(reason)
        return AdmissionRefusedError(reason, message, self.retry_after_s())

    def admits_now(self, key: str, cost: int) -> bool:
        """An auction of ``cost`` for ``key`` would be admitted at once (no wait, no refusal)."""
        return not self._waiters and not self._blocked_globally(cost) and not self._blocked_by_key(key)

    @asynccontextmanager
    async def admit(self, key: str, cost: int) -> AsyncIterator[None]:
        """Hold a place for one auction for the duration of the block, waiting (bounded) if needed."""
        arrived = time.monotonic()
        if self.admits_now(key, cost):
            self._take(key, cost)
        else:
            if len(self._waiters) >= self.limits.max_waiting:
                raise self._refuse(
                    "queue_full",
                    f"the gateway is at its admission limits and {len(self._waiters)} auctions are "
                    f"already waiting (MAX_WAITING_AUCTIONS={self.limits.max_waiting}); retry later",
                )
            waiter = _Waiter(key, cost, asyncio.get_running_loop().create_future())
            self._waiters.append(waiter)
            self._admit_waiters()  # it may fit already: the waiters ahead may be held only by their keys
            self._publish()
            try:
                await asyncio.wait_for(asyncio.shield(waiter.admitted), self.limits.max_wait_s)
            except TimeoutError:
                if not waiter.admitted.done():
                    waiter.admitted.cancel()
                    self._drop(waiter)
                    raise self._refuse(
                        "wait_timeout",
                        f"not admitted within ADMISSION_WAIT_S={self.limits.max_wait_s:g} s "
                        "(the gateway is at its concurrency or worker-token limit); retry later",
                    ) from None
            except asyncio.CancelledError:  # the client went away while waiting
                if waiter.admitted.done() and not waiter.admitted.cancelled():
                    self._give_back(key, cost, 0.0)  # admitted just as it was cancelled
                else:
                    waiter.admitted.cancel()
                    self._drop(waiter)
                raise
        self.observer.admission_waited(time.monotonic() - arrived)
        started = time.monotonic()
        try:
            yield
        finally:
            self._give_back(key, cost, time.monotonic() - started)

    def _drop(self, waiter: _Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        self._admit_waiters()  # a dropped head may unblock the ones behind it
        self._publish()
