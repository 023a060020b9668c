"""Sending one worker request: which worker, how long to wait, when to hedge, when to give up.

Job: `WorkerDispatcher.call` runs one logical request (a tokenize, a generation share, a scoring
chunk) over the workers that `app.auction.worker_health` says are up. Imports app.settings,
app.auction.worker_health and app.auction.observers only; the HTTP attempt itself is a callable given
by the engine client. Invariants and figures: docs/DESIGN.md.

* Read timeout per request, from the work asked, not one fixed figure:
  ``min(WORKER_TIMEOUT_S, WORKER_TIMEOUT_BASE_S + tokens x WORKER_TIMEOUT_PER_TOKEN_S, time left)``,
  where the time left is the auction's deadline (`auction_deadline`, a context variable the service
  sets) minus now: no request outlives its auction.
* Hedging (Dean & Barroso, "The Tail at Scale"): a request still unanswered after its hedge delay
  (WORKER_HEDGE_FACTOR x the recent typical time of requests of that kind per token, at least
  WORKER_HEDGE_MIN_S; half the timeout before anything was measured) is sent again to the next
  healthy worker; the first answer wins and the other is cancelled. Safe for the outcome: every
  request is a pure function of its body - generation carries its own seed (derived from the auction
  seed and the share index, never from the worker), scoring and tokenizing are deterministic - so
  any worker gives the same answer and hedging never changes an auction (a test checks it).
* A failed attempt (connect error, timeout, 5xx: `RetryableWorkerError`) goes to the next worker
  while attempts are left; a worker's 4xx or a broken answer is final (the caller's error type).
* Priority: `auction_priority` (a context variable the gateway sets at admission) is the vLLM
  ``priority`` the engine client puts on the auction's completions; workers order waiting work by it
  and it never changes an answer (the requests stay pure functions of the rest of their bodies).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import TypeVar

from app.auction.observers import NoopWorkerObserver, WorkerObserver
from app.auction.worker_health import WorkerHealth
from app.settings import Settings

logger = logging.getLogger(__name__)

Result = TypeVar("Result")

_deadline: ContextVar[float | None] = ContextVar("mosaic_auction_deadline", default=None)
_priority: ContextVar[int] = ContextVar("mosaic_auction_priority", default=0)


class WorkersUnavailableError(Exception):
    """No worker could answer (refused, timed out, 5xx on every try): 503."""


class RetryableWorkerError(Exception):
    """One attempt failed in a way another worker may not (connect error, timeout, 5xx)."""


class BusyWorkerError(RetryableWorkerError):
    """A worker refused 429: it holds WORKER_MAX_QUEUED_TOKENS already (busy, not sick)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class WorkersBusyError(Exception):
    """Every worker tried answered 429 (their queues are full): the gateway answers 429 too."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@contextlib.contextmanager
def auction_deadline(seconds: float) -> Iterator[None]:
    """Within this block worker requests never wait past `seconds` from now."""
    token = _deadline.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


@contextlib.contextmanager
def auction_priority(priority: int) -> Iterator[None]:
    """Within this block worker completions carry vLLM's ``priority`` (lower is served earlier): the
    auction's, from admission (`app.auction.admission.fair_priority`). It orders work, never results."""
    token = _priority.set(priority)
    try:
        yield
    finally:
        _priority.reset(token)


def current_priority() -> int:
    return _priority.get()


def time_left() -> float | None:
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


class _Typical:
    """EWMA of seconds per unit of work, per kind of request (generate, score, tokenize ...)."""

    def __init__(self, alpha: float = 0.2) -> None:
        self.alpha = alpha
        self._per_unit: dict[str, float] = {}

    def observe(self, kind: str, units: int, seconds: float) -> None:
        value = seconds / max(1, units)
        old = self._per_unit.get(kind)
        self._per_unit[kind] = value if old is None else old + self.alpha * (value - old)

    def expected(self, kind: str, units: int) -> float | None:
        per_unit = self._per_unit.get(kind)
        return None if per_unit is None else per_unit * max(1, units)


class WorkerDispatcher:
    """Timeouts, hedging and retries of worker requests over the healthy workers."""

    def __init__(
        self, settings: Settings, health: WorkerHealth, observer: WorkerObserver | None = None
    ) -> None:
        self.settings = settings
        self.health = health
        self.typical = _Typical()
        self.observer = observer or NoopWorkerObserver()

    def read_timeout(self, tokens: int) -> float:
        s = self.settings
        timeout = min(s.worker_timeout_s, s.worker_timeout_base_s + tokens * s.worker_timeout_per_token_s)
        left = time_left()
        if left is not None:
            timeout = min(timeout, max(0.01, left))
        return timeout

    def hedge_delay(self, kind: str, tokens: int, timeout: float) -> float:
        expected = self.typical.expected(kind, tokens)
        if expected is None:
            return timeout / 2
        delay = max(self.settings.worker_hedge_min_s, self.settings.worker_hedge_factor * expected)
        return min(timeout / 2, delay)

    def _attempts_allowed(self, workers: int) -> tuple[int, bool]:
        """How many attempts one request may make over `workers` workers, and whether it is hedged."""
        if workers == 1:
            budget = 1 + self.settings.worker_retries  # one worker: retry it (a transient blip)
        else:
            budget = min(workers, 1 + self.settings.worker_retries)
        hedging = self.settings.worker_hedge and workers > 1
        return (max(budget, 2) if hedging else budget), hedging

    async def call(
        self,
        kind: str,
        tokens: int,
        preferred: int,
        attempt: Callable[[str, float], Awaitable[Result]],
    ) -> Result:
        """Run `attempt(url, read_timeout)` on the workers, hedged; the first success is the answer."""
        order = self.health.order(preferred)
        budget, hedging = self._attempts_allowed(len(order))
        timeout = self.read_timeout(tokens)
        in_flight: dict[asyncio.Task[Result], tuple[str, float]] = {}  # task -> (url, started)
        failures: list[RetryableWorkerError] = []
        launched = 0

        def launch() -> None:
            nonlocal launched
            taken = {url for url, _ in in_flight.values()}
            choices = [url for url in order[launched:] + order[:launched] if url not in taken] or order
            task = asyncio.ensure_future(attempt(choices[0], timeout))
            in_flight[task] = (choices[0], time.monotonic())
            launched += 1

        launch()
        try:
            while in_flight:
                can_hedge = hedging and launched < budget and len(in_flight) < len(order)
                delay = self._until_hedge(kind, tokens, timeout, in_flight.values()) if can_hedge else None
                done, _ = await asyncio.wait(in_flight, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    slow_url = next(iter(in_flight.values()))[0]
                    logger.warning("hedging a slow worker request", extra={"worker": slow_url, "kind": kind})
                    self.observer.worker_request_hedged(slow_url)
                    launch()
                    continue
                for task in done:
                    _, started = in_flight.pop(task)
                    error = task.exception()
                    if error is None:
                        self.typical.observe(kind, tokens, time.monotonic() - started)
                        return task.result()
                    if not isinstance(error, RetryableWorkerError):
                        raise error
                    failures.append(error)
                if not in_flight and launched < budget:
                    launch()
        finally:
            await _cancel(list(in_flight))
        raise _gave_up(failures)

    def _until_hedge(
        self, kind: str, tokens: int, timeout: float, in_flight: Iterable[tuple[str, float]]
    ) -> float:
        """Seconds until the oldest attempt in flight is slow enough to hedge (0 when it already is)."""
        oldest = min(started for _, started in in_flight)
        return max(0.0, oldest + self.hedge_delay(kind, tokens, timeout) - time.monotonic())


async def _cancel(tasks: list[asyncio.Task[Result]]) -> None:
    """Cancel the attempts still running and wait for them to end (no request left behind)."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


def _gave_up(failures: list[RetryableWorkerError]) -> Exception:
    """Every attempt failed: 429 when every worker tried was busy (a full queue), else 503."""
    causes = "; ".join(str(error) for error in failures)
    busy = [error for error in failures if isinstance(error, BusyWorkerError)]
    if busy and len(busy) == len(failures):
        return WorkersBusyError(
            "every worker is at its queue limit: " + causes, max(e.retry_after_s for e in busy)
        )
    return WorkersUnavailableError("no worker answered: " + causes)
