"""What the auction reports as it runs: observer protocols the domain calls, each with a no-op.

`AuctionObserver` (an auction's outcome, latencies, revenue: `app.auction.service`, through
`observe_served`), `WorkerObserver` (worker requests failed or hedged, breakers:
`app.auction.engine_client`, `worker_health`, `worker_dispatch`) and `AdmissionObserver`
(`app.auction.admission`). The gateway's Prometheus metrics (`app.gateway.metrics`) implement them; the
evaluation runs on the no-ops. Imports `app.contract` only; see docs/DESIGN.md § Observability.
"""

from __future__ import annotations

import logging
from typing import Protocol

from app.contract.request import AuctionRequest
from app.contract.result import AuctionResponse, AuctionTimings

logger = logging.getLogger("app.auction.service")


class AuctionObserver(Protocol):
    def auction_counted(self, outcome: str, proposal: str) -> None:
        """One auction ended with `outcome` (served, test, deadline, abandoned, ...)."""

    def auction_served(self, timings: AuctionTimings, candidates: int, effective_sample_size: float) -> None:
        """A served (not test) auction's stage latencies, its M and the allocation's ESS."""

    def revenue_billed(self, currency: str, amount: float) -> None:
        """Revenue entered the ledger (an auction billed at once, or a pending charge rendered)."""

    def campaign_counted(self, outcome: str) -> None:
        """A requested campaign `entered`, was left out (`paused`, `out_of_budget`, ...: the exclusion
        reason), or its payment was `lowered` / `dropped` to fit its budget. No campaign id: bounded."""

    def no_fill_counted(self, reason: str) -> None:
        """An auction nobody bid in was answered organically (`reason`: the no-fill reason)."""


class WorkerObserver(Protocol):
    def worker_request_failed(self, url: str, kind: str) -> None:
        """A request to the worker at `url` failed (`kind`: the exception or `http_<status>`)."""

    def worker_request_hedged(self, url: str) -> None:
        """A request slow at `url` past its hedge delay was sent again to another worker."""

    def worker_breaker(self, url: str, letting_traffic: bool) -> None:
        """The worker's circuit breaker now: closed or half-open (True), open (False)."""

    def worker_ejected(self, url: str) -> None:
        """The breaker opened (WORKER_EJECT_FAILURES consecutive failures, or a failed trial)."""


class AdmissionObserver(Protocol):
    def admission_load(self, in_flight: int, waiting: int, tokens_in_flight: int) -> None:
        """Auctions running, auctions waiting, and the worker tokens the running ones may cost."""

    def admission_waited(self, seconds: float) -> None:
        """An admitted auction waited this long from arrival to admission."""

    def admission_refused(self, reason: str) -> None:
        """An auction was refused 429 (`reason`: queue_full, wait_timeout)."""


class NoopAuctionObserver:
    """Reports nothing (the evaluation, tests)."""

    def auction_counted(self, outcome: str, proposal: str) -> None:
        pass

    def auction_served(self, timings: AuctionTimings, candidates: int, effective_sample_size: float) -> None:
        pass

    def revenue_billed(self, currency: str, amount: float) -> None:
        pass

    def campaign_counted(self, outcome: str) -> None:
        pass

    def no_fill_counted(self, reason: str) -> None:
        pass


class NoopWorkerObserver:
    """Reports nothing (the evaluation, tests)."""

    def worker_request_failed(self, url: str, kind: str) -> None:
        pass

    def worker_request_hedged(self, url: str) -> None:
        pass

    def worker_breaker(self, url: str, letting_traffic: bool) -> None:
        pass

    def worker_ejected(self, url: str) -> None:
        pass


class NoopAdmissionObserver:
    """Reports nothing (tests)."""

    def admission_load(self, in_flight: int, waiting: int, tokens_in_flight: int) -> None:
        pass

    def admission_waited(self, seconds: float) -> None:
        pass

    def admission_refused(self, reason: str) -> None:
        pass


def observe_served(
    observer: AuctionObserver,
    request: AuctionRequest,
    response: AuctionResponse,
    num_candidates: int,
    timings: AuctionTimings,
) -> None:
    """A served auction's counters, latencies and revenue (a test auction: counted only), and its log
    line (under the service's logger name, as before)."""
    if request.test:
        observer.auction_counted("test", request.proposal)  # not in the revenue metrics
    else:
        observer.auction_counted("served", request.proposal)
        observer.auction_served(timings, num_candidates, response.effective_sample_size)
        if response.billing == "billed":  # a pending charge counts when rendered
            observer.revenue_billed(response.currency, response.revenue)
    logger.info(
        "auction served",
        extra={
            "auction_id": response.auction_id,
            "advertisers": len(request.advertisers),
            "candidates": num_candidates,
            "proposal": request.proposal,
            "revenue": response.revenue,
            "ess": response.effective_sample_size,
            "total_ms": round(timings.total, 2),
            "worker_ms": round(timings.workers, 2),
        },
    )
