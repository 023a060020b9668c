"""Admission control of the gateway: concurrency, model tokens, per-key fair share, a bounded wait.

An auction is admitted before any model work when, with it, no limit is passed: concurrent auctions
(``max_concurrent``), concurrent auctions of one API key (``max_per_key``), the model tokens the running
auctions may cost (``max_tokens_in_flight``; an auction's cost is `app.auction.cost`'s: prompt +
generation + scoring, in the workers' unit) and, while another key's auction waits, one key's share of
those tokens (``key_share``). Otherwise it waits, for at most ``max_wait_s`` and among at most
``max_waiting``; a full queue or a wait past the limit is refused (`AdmissionRefusedError` → 429 with
``Retry-After``, the time the tokens ahead of it take at the throughput measured): never an unbounded
queue.

Fairness across keys (max-min, as Dominant Resource Fairness with one resource): waiters queue per key
(FIFO within a key); each release offers the capacity to the key holding the fewest tokens in flight
(ties: the oldest head), so a light key's small auction goes before a heavy key's stream. A key past its
share while another key waits, or at its own concurrency limit, is skipped: it holds nobody up. The
head so chosen, if a global limit (concurrency or tokens) blocks it, stops the scan: nobody overtakes it,
so a large auction is never starved by small ones (its key holds nothing once its own auctions end, and
then only older heads of keys holding nothing come first). A key may use idle capacity beyond its share
when nobody else waits; an auction is always admitted when nothing else runs, so no valid request is
refused for good.

The same fair share reaches inside the workers: `admit` yields the auction's `fair_priority`, vLLM's
request ``priority`` (lower is served earlier) from the tokens its key holds in flight with it, which
the engine client sends on every completion (`app.auction.worker_dispatch.auction_priority`), so a
worker's step scheduler serves the light key's generation and scoring before a heavy key's queued work.

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

# Model tokens per second assumed before the first auction has finished (then: measured).
PRIOR_TOKENS_PER_S = 20_000.0


def fair_priority(held_tokens: int) -> int:
    """vLLM's request ``priority`` (lower first) of an auction whose key holds ``held_tokens`` model
    tokens in flight, this auction's included: ⌊log2⌋ + 1 (0 for none). Coarse on purpose: keys
    holding within 2× of each other share a bucket and are served in arrival order; a key holding
    little capacity goes before one holding much (the light key's small auction before a heavy key's
    stream). Fixed at admission; the workers' aging bounds how long a high one waits."""
    return max(0, held_tokens).bit_length()


@dataclass(frozen=True)
class AdmissionLimits:
    max_concurrent: int
    max_per_key: int
    max_tokens_in_flight: int
    max_waiting: int
    max_wait_s: float
    key_share: float = 1.0  # of max_tokens_in_flight, one key's while another key waits


class AdmissionRefusedError(Exception):
    """Refused before any model work; ``reason`` names the limit, ``retry_after_s`` is the advice."""

    def __init__(self, reason: str, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = retry_after_s


class TokenThroughput:
    """Model tokens of finished auctions per second of busy time (while any auction runs), over the
    last ``window`` finishes: the rate `Retry-After` divides the tokens ahead by."""

    def __init__(self, prior_tokens_per_s: float = PRIOR_TOKENS_PER_S, window: int = 32) -> None:
        self._prior = prior_tokens_per_s
        self._busy_s = 0.0
        self._done_tokens = 0
        self._running = 0
        self._last = time.monotonic()
        self._marks: deque[tuple[float, int]] = deque(maxlen=window)

    def _tick(self, now: float) -> None:
        if self._running:
            self._busy_s += now - self._last
        self._last = now

    def started(self, now: float) -> None:
        self._tick(now)
        if not self._marks:
            self._marks.append((self._busy_s, self._done_tokens))
        self._running += 1

    def finished(self, tokens: int, now: float) -> None:
        self._tick(now)
        self._running -= 1
        self._done_tokens += tokens
        self._marks.append((self._busy_s, self._done_tokens))

    def tokens_per_s(self) -> float:
        if len(self._marks) < 2:
            return self._prior
        (busy_0, done_0), (busy_1, done_1) = self._marks[0], self._marks[-1]
        if busy_1 - busy_0 <= 0.01 or done_1 <= done_0:
            return self._prior
        return (done_1 - done_0) / (busy_1 - busy_0)


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
        self.throughput = TokenThroughput()
        self._in_flight = 0
        self._per_key: dict[str, int] = {}
        self._key_tokens: dict[str, int] = {}
        self._tokens = 0
        self._queues: dict[str, deque[_Waiter]] = {}  # per key, FIFO; only keys with waiters

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    def key_tokens(self, key: str) -> int:
        """Model tokens the running auctions of `key` may cost."""
        return self._key_tokens.get(key, 0)

    def _blocked_globally(self, cost: int) -> bool:
        if self._in_flight == 0:
            return False
        return (
            self._in_flight >= self.limits.max_concurrent
            or self._tokens + cost > self.limits.max_tokens_in_flight
        )

    def _others_wait(self, key: str) -> bool:
        return any(other != key for other in self._queues)

    def _blocked_by_key(self, key: str, cost: int) -> bool:
        """At its own concurrency limit, or past its share while another key's auction waits (a key
        holding nothing is never held back by its share: its auction alone may be the share)."""
        if self._per_key.get(key, 0) >= self.limits.max_per_key:
            return True
        held = self.key_tokens(key)
        share = self.limits.key_share * self.limits.max_tokens_in_flight
        return held > 0 and held + cost > share and self._others_wait(key)

    def _take(self, key: str, cost: int) -> None:
        self._in_flight += 1
        self._per_key[key] = self._per_key.get(key, 0) + 1
        self._key_tokens[key] = self._key_tokens.get(key, 0) + cost
        self._tokens += cost
        self.throughput.started(time.monotonic())
        self._publish()

    def _give_back(self, key: str, cost: int) -> None:
        self._in_flight -= 1
        self._per_key[key] -= 1
        self._key_tokens[key] -= cost
        if not self._per_key[key]:
            del self._per_key[key], self._key_tokens[key]
        self._tokens -= cost
        self.throughput.finished(cost, time.monotonic())
        self._admit_waiters()
        self._publish()

    def _prune(self) -> None:
        """Waiters that timed out or were cancelled meanwhile leave their queues."""
        for key in list(self._queues):
            queue = self._queues[key]
            while queue and queue[0].admitted.done():
                queue.popleft()
            if not queue:
                del self._queues[key]

    def _next_waiter(self) -> _Waiter | None:
        """The waiter to admit now: the head of the key holding the fewest tokens (then the oldest head)
        not held back by its own key; None when that one is blocked globally (nobody overtakes it)."""
        order = sorted(self._queues, key=lambda k: (self.key_tokens(k), self._queues[k][0].enqueued_at))
        for key in order:
            head = self._queues[key][0]
            if self._blocked_by_key(key, head.cost):
                continue
            return None if self._blocked_globally(head.cost) else head
        return None

    def _admit_waiters(self) -> None:
        while True:
            self._prune()
            waiter = self._next_waiter()
            if waiter is None:
                return
            self._queues[waiter.key].popleft()
            if not self._queues[waiter.key]:
                del self._queues[waiter.key]
            self._take(waiter.key, waiter.cost)
            waiter.admitted.set_result(None)

    def _publish(self) -> None:
        self.observer.admission_load(self._in_flight, self.waiting, self._tokens)

    def retry_after_s(self, cost: int = 0, ahead: int | None = None) -> int:
        """Advice for a refused client: the seconds the workers take for the tokens that must finish
        before an auction of `cost` fits (the running ones' and `ahead`, by default every waiter's),
        at the measured throughput; at least 1."""
        if ahead is None:
            ahead = sum(w.cost for queue in self._queues.values() for w in queue if not w.admitted.done())
        excess = self._tokens + ahead + cost - self.limits.max_tokens_in_flight
        if excess <= 0:  # held by the concurrency limit: about one running auction's worth
            excess = self._tokens // max(self._in_flight, 1) + ahead
        return max(1, math.ceil(excess / self.throughput.tokens_per_s()))

    def _refuse(self, reason: str, message: str, retry_after_s: int) -> AdmissionRefusedError:
        self.observer.admission_refused(reason)
        return AdmissionRefusedError(reason, message, retry_after_s)

    def admits_now(self, key: str, cost: int) -> bool:
        """An auction of ``cost`` for ``key`` would be admitted at once (no wait, no refusal)."""
        return not self._queues and not self._blocked_globally(cost) and not self._blocked_by_key(key, cost)

    async def _wait(self, key: str, cost: int) -> None:
        """Queue (bounded) and wait (bounded) for a place; on return the place is taken."""
        if self.waiting >= self.limits.max_waiting:
            raise self._refuse(
                "queue_full",
                f"the gateway is at its admission limits and {self.waiting} auctions are already "
                f"waiting (MAX_WAITING_AUCTIONS={self.limits.max_waiting}); retry later",
                self.retry_after_s(cost),
            )
        waiter = _Waiter(key, cost, asyncio.get_running_loop().create_future())
        self._queues.setdefault(key, deque()).append(waiter)
        self._admit_waiters()  # it may fit already: it may be the least-served key's
        self._publish()
        try:
            await asyncio.wait_for(asyncio.shield(waiter.admitted), self.limits.max_wait_s)
        except TimeoutError:
            if not waiter.admitted.done():
                waiter.admitted.cancel()
                self._drop(waiter)
                ahead = sum(
                    w.cost for q in self._queues.values() for w in q if w.enqueued_at < waiter.enqueued_at
                )
                raise self._refuse(
                    "wait_timeout",
                    f"not admitted within ADMISSION_WAIT_S={self.limits.max_wait_s:g} s (the gateway is "
                    "at its concurrency or model-token limit); retry later",
                    self.retry_after_s(cost, ahead),
                ) from None
        except asyncio.CancelledError:  # the client went away while waiting
            if waiter.admitted.done() and not waiter.admitted.cancelled():
                self._give_back(key, cost)  # admitted just as it was cancelled
            else:
                waiter.admitted.cancel()
                self._drop(waiter)
            raise

    @asynccontextmanager
    async def admit(self, key: str, cost: int) -> AsyncIterator[int]:
        """Hold a place for one auction for the duration of the block, waiting (bounded) if needed;
        yields its `fair_priority` (from what its key holds once admitted, this auction included)."""
        arrived = time.monotonic()
        if self.admits_now(key, cost):
            self._take(key, cost)
        else:
            await self._wait(key, cost)
        self.observer.admission_waited(time.monotonic() - arrived)
        try:
            yield fair_priority(self.key_tokens(key))
        finally:
            self._give_back(key, cost)

    def _drop(self, waiter: _Waiter) -> None:
        queue = self._queues.get(waiter.key)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            if not queue:
                del self._queues[waiter.key]
        self._admit_waiters()  # a dropped head may unblock the ones behind it
        self._publish()
