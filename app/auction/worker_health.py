"""Per-worker health: a circuit breaker fed by passive signals and an active probe.

Job: `WorkerHealth` keeps one breaker per worker URL and says which workers may get traffic now.
Imports httpx, app.settings and `app.auction.observers` only (what it reports: a `WorkerObserver`);
see docs/DESIGN.md.

States of one worker's breaker:

* ``closed`` (up): gets traffic. A failure - a request that timed out, could not connect or got a
  5xx (passive, reported by `app.auction.engine_client`), or a probe that failed (active) - counts;
  WORKER_EJECT_FAILURES consecutive failures eject it. Any success resets the count.
* ``open`` (ejected): gets no traffic for WORKER_EJECT_COOLDOWN_S; the probe keeps running.
* ``half_open``: after the cool-down, the next probe is the trial: success closes the breaker
  (up again), failure opens it for another cool-down. A request that fails in this state re-opens
  it at once.

The probe is cheap (``GET /health``, WORKER_PROBE_TIMEOUT_S) and runs in a background task every
WORKER_PROBE_INTERVAL_S, so a hung worker (SIGSTOP: the kernel still accepts its connections, nothing
answers) is ejected within about interval x failures + timeout, whatever the traffic, and readiness
reads this state without any I/O of its own. When every worker is ejected, `order` still returns all
of them (panic mode, as Envoy's panic threshold): trying a maybe-dead worker beats refusing outright.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from app.auction.observers import NoopWorkerObserver, WorkerObserver
from app.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class _Breaker:
    state: str = "closed"  # closed | open | half_open
    failures: int = 0  # consecutive
    opened_at: float = 0.0
    last_error: str = ""
    ejections: int = 0


class WorkerHealth:
    """Circuit breakers of the workers and the probe task; each breaker's state goes to the observer."""

    def __init__(
        self,
        settings: Settings,
        worker_urls: Sequence[str],
        observer: WorkerObserver | None = None,
    ) -> None:
        self.settings = settings
        self.worker_urls = list(worker_urls)
        self.observer = observer or NoopWorkerObserver()
        self._breakers = {url: _Breaker() for url in self.worker_urls}
        self._probed_once = asyncio.Event()
        for url in self.worker_urls:
            self._publish(url)

    # --- state ------------------------------------------------------------------------------------

    def is_up(self, url: str) -> bool:
        breaker = self._breakers[url]
        cooled = time.monotonic() - breaker.opened_at >= self.settings.worker_eject_cooldown_s
        if breaker.state == "open" and cooled:
            breaker.state = "half_open"
        return breaker.state != "open"

    def order(self, preferred: int) -> list[str]:
        """Workers to try, starting at `preferred` (round-robin), the up ones first; all if none is up."""
        count = len(self.worker_urls)
        rotated = [self.worker_urls[(preferred + i) % count] for i in range(count)]
        up = [url for url in rotated if self.is_up(url)]
        return up + [url for url in rotated if url not in up] if up else rotated

    def healthy(self) -> dict[str, bool]:
        return {url: self.is_up(url) for url in self.worker_urls}

    def describe(self) -> dict[str, dict[str, object]]:
        return {
            url: {"up": self.is_up(url), "state": b.state, "failures": b.failures, "error": b.last_error}
            for url, b in self._breakers.items()
        }

    # --- signals ----------------------------------------------------------------------------------

    def record_success(self, url: str) -> None:
        breaker = self._breakers.get(url)
        if breaker is None:
            return
        breaker.failures = 0
        self.is_up(url)  # open past its cool-down: this success is the half-open trial
        if breaker.state == "half_open":
            breaker.state = "closed"
            logger.warning("worker back in service", extra={"worker": url})
        if breaker.state == "closed":
            breaker.last_error = ""
        self._publish(url)

    def record_failure(self, url: str, kind: str) -> None:
        breaker = self._breakers.get(url)
        if breaker is None:
            return
        breaker.failures += 1
        breaker.last_error = kind
        if breaker.state == "half_open" or (
            breaker.state == "closed" and breaker.failures >= self.settings.worker_eject_failures
        ):
            self._eject(url, breaker, kind)
        self._publish(url)

    def _eject(self, url: str, breaker: _Breaker, kind: str) -> None:
        breaker.state = "open"
        breaker.opened_at = time.monotonic()
        breaker.ejections += 1
        self.observer.worker_ejected(url)
        logger.warning(
            "worker ejected",
            extra={"worker": url, "error": kind, "cooldown_s": self.settings.worker_eject_cooldown_s},
        )

    def _publish(self, url: str) -> None:
        self.observer.worker_breaker(url, self._breakers[url].state != "open")

    # --- the active probe -------------------------------------------------------------------------

    async def probe(self, url: str, client: httpx.AsyncClient) -> bool:
        """One cheap probe (GET /health, short timeout); feeds the breaker; True when it answered 200."""
        timeout = self.settings.worker_probe_timeout_s
        try:
            async with asyncio.timeout(timeout):
                response = await client.get("/health", timeout=timeout)
        except (httpx.HTTPError, TimeoutError, OSError) as error:
            self.record_failure(url, f"probe: {type(error).__name__}")
            return False
        if response.status_code != 200:
            self.record_failure(url, f"probe: HTTP {response.status_code}")
            return False
        breaker = self._breakers[url]
        if breaker.state == "open":
            # Still cooling down: a good probe does not shorten it (a flapping worker stays out).
            self.is_up(url)
            if breaker.state == "open":
                breaker.failures = 0
                return True
        self.record_success(url)
        return True

    async def probe_all(self, clients: dict[str, httpx.AsyncClient]) -> None:
        await asyncio.gather(*(self.probe(url, clients[url]) for url in self.worker_urls))
        self._probed_once.set()

    async def run(self, clients: dict[str, httpx.AsyncClient], stop: asyncio.Event) -> None:
        """Probe every worker every WORKER_PROBE_INTERVAL_S until `stop` is set."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self.probe_all(clients)
            except Exception:  # pragma: no cover - a probe never raises; the loop must not die
                logger.exception("worker probe failed")
            pause = max(0.0, self.settings.worker_probe_interval_s - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=pause)
