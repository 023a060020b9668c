"""Prometheus metrics of the gateway (DESIGN.md § Observability), in a per-app registry.

`GatewayMetrics` implements the domain's observers (`app.auction.observers.AuctionObserver`,
`WorkerObserver`, `app.ledger.observers.RedisObserver`, `app.transparency.observers.TransparencyObserver`,
`app.archive.observers.ArchiveObserver`)
and holds the gateway's own gauges;
`AdmissionMetrics` implements `AdmissionObserver`. A registry per app (not the process default) lets
tests and the CLI build several apps in one process. Imports prometheus_client and `app.contract`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from app.contract.result import AuctionTimings

STAGES = ("tokenize", "generate", "score", "mechanism", "billing", "total")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)
_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class GatewayMetrics:
    """The gateway's registry. Metrics are registered in the order /metrics lists them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._register_auction_metrics()
        self._register_ledger_metrics()
        self._register_health_metrics()
        self._register_transparency_metrics()
        self._register_archive_metrics()

    def _register_auction_metrics(self) -> None:
        registry = self.registry
        self.http_requests = Histogram(
            "mosaic_http_request_duration_seconds",
            "HTTP request latency by route and status.",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "mosaic_auction_stage_seconds",
            "Latency of each stage of an auction.",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.auctions = Counter(
            "mosaic_auctions_total", "Auctions by outcome.", ["outcome", "proposal"], registry=registry
        )
        self.candidates = Histogram(
            "mosaic_auction_candidates",
            "Candidates (M) per auction.",
            buckets=(1, 2, 4, 8, 16, 20, 32, 64, 128, 256, 512, 1024),
            registry=registry,
        )
        self.effective_sample_size = Histogram(
            "mosaic_auction_effective_sample_size",
            "Effective sample size 1/Σπ² of the allocation.",
            buckets=(1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128),
            registry=registry,
        )
        # Payments are never negative, so this only goes up; a gauge all the same, so that its name
        # (no `_total` suffix) stays what the dashboards and alert rules read.
        self.revenue = Gauge(
            "mosaic_revenue_cumulative",
            "Platform revenue billed since start (currency units).",
            ["currency"],
            registry=registry,
        )
        self.worker_errors = Counter(
            "mosaic_worker_errors_total", "Failed worker requests.", ["worker", "kind"], registry=registry
        )
        # One label value per outcome (entered, an exclusion reason, lowered, dropped): never a campaign id.
        self.campaigns = Counter(
            "mosaic_campaigns_total",
            "Requested campaigns by outcome: entered, left out (the reason), payment lowered or dropped "
            "to fit the budget.",
            ["outcome"],
            registry=registry,
        )
        self.no_fills = Counter(
            "mosaic_no_fill_total",
            "Auctions nobody bid in, answered with one organic reply (nothing billed), by no-fill reason.",
            ["reason"],
            registry=registry,
        )

    def _register_ledger_metrics(self) -> None:
        registry = self.registry
        self.billing_stream_length = Gauge(
            "mosaic_billing_stream_length", "Entries in the billing stream.", registry=registry
        )
        self.billing_pending = Gauge(
            "mosaic_billing_pending", "Billing events delivered but not yet acknowledged.", registry=registry
        )
        self.dead_letters = Gauge(
            "mosaic_ledger_dead_letters",
            "Billing events the ledger set aside as dead letters (should stay 0).",
            registry=registry,
        )
        self.conflicts = Gauge(
            "mosaic_ledger_conflicts",
            "Billing events whose id came again with a different body (should stay 0).",
            registry=registry,
        )
        self.reconcile_differences = Gauge(
            "mosaic_ledger_reconcile_differences",
            "Differences found by the last `mosaic ledger reconcile` (absent before the first run).",
            registry=registry,
        )
        self.reconcile_timestamp = Gauge(
            "mosaic_ledger_reconcile_timestamp_seconds",
            "Unix time of the last `mosaic ledger reconcile`.",
            registry=registry,
        )
        self.ready = Gauge(
            "mosaic_ready",
            "1 when the gateway is ready (a worker and Redis answer, as /readyz), else 0.",
            registry=registry,
        )
        self.billing_lag = Gauge(
            "mosaic_billing_lag", "Billing events not yet delivered to the ledger group.", registry=registry
        )

    def _register_health_metrics(self) -> None:
        registry = self.registry
        self.worker_up = Gauge(
            "mosaic_worker_up",
            "1 while the worker's circuit breaker lets traffic through (closed or half-open), 0 ejected.",
            ["worker"],
            registry=registry,
        )
        self.worker_ejections = Counter(
            "mosaic_worker_ejections_total",
            "Times the worker was ejected (WORKER_EJECT_FAILURES consecutive failures).",
            ["worker"],
            registry=registry,
        )
        self.worker_hedges = Counter(
            "mosaic_worker_hedges_total",
            "Requests re-sent to another worker because this one was slow past the hedge delay.",
            ["worker"],
            registry=registry,
        )
        self.redis_writable = Gauge(
            "mosaic_redis_writable",
            "1 while Redis accepts writes (last probe), 0 when down or full (POST /auction answers 503).",
            registry=registry,
        )
        self.redis_used_memory = Gauge(
            "mosaic_redis_used_memory_bytes", "Redis used_memory (INFO memory).", registry=registry
        )
        self.redis_maxmemory = Gauge(
            "mosaic_redis_maxmemory_bytes", "Redis maxmemory (0: no limit).", registry=registry
        )
        self.redis_memory_budget = Gauge(
            "mosaic_redis_memory_budget_bytes",
            "Steady-state Redis memory of the audit records and the ledger at SIZING_AUCTIONS_PER_S "
            "(DEPLOY.md formula); keep maxmemory above it.",
            registry=registry,
        )
        self.redis_restarts = Counter(
            "mosaic_redis_restarts_total",
            "Restarts of the embedded Redis by its supervisor.",
            registry=registry,
        )

    # --- AuctionObserver ---------------------------------------------------------------------------

    def _register_transparency_metrics(self) -> None:  # issue 35
        self.tlog_tree_size = Gauge(
            "mosaic_tlog_tree_size",
            "Leaves covered by the latest tree head this gateway signed.",
            registry=self.registry,
        )
        self.tlog_sign_seconds = Histogram(
            "mosaic_tlog_head_sign_seconds",
            "Time to sign and store one tree head (after the leaves were read and checked).",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
            registry=self.registry,
        )
        self.tlog_tampered = Counter(
            "mosaic_tlog_tampered",
            "Checks before a tree head that failed (no head signed), by kind: "
            "deleted, rewritten, fork, malformed.",
            ["kind"],
            registry=self.registry,
        )

    def _register_archive_metrics(self) -> None:  # issue 36
        self.archive_rows = Counter(
            "mosaic_archive_rows",
            "Rows the archiver settled, by kind (records, events) and outcome: archived (new in "
            "PostgreSQL), repeated (already there: a pass after a kill), expired (lost before archiving).",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.archive_queue_depth = Gauge(
            "mosaic_archive_queue_depth", "Audit records queued for archiving.", registry=self.registry
        )
        self.archive_oldest_age = Gauge(
            "mosaic_archive_queue_oldest_age_seconds",
            "Age of the oldest record queued for archiving (lost if it reaches AUDIT_TTL_S).",
            registry=self.registry,
        )
        self.archive_failures = Counter(
            "mosaic_archive_failures",
            "Archiver passes that failed, by cause.",
            ["cause"],
            registry=self.registry,
        )

    def archive_batch(self, kind: str, archived: int, repeated: int, expired: int) -> None:
        for outcome, count in (("archived", archived), ("repeated", repeated), ("expired", expired)):
            if count:
                self.archive_rows.labels(kind, outcome).inc(count)

    def archive_queue(self, depth: int, oldest_age_s: float) -> None:
        self.archive_queue_depth.set(depth)
        self.archive_oldest_age.set(oldest_age_s)

    def archive_failed(self, cause: str) -> None:
        self.archive_failures.labels(cause).inc()

    def log_head(self, tree_size: int, sign_seconds: float) -> None:
        self.tlog_tree_size.set(tree_size)
        self.tlog_sign_seconds.observe(sign_seconds)

    def log_tampered(self, kind: str) -> None:
        self.tlog_tampered.labels(kind).inc()

    def auction_counted(self, outcome: str, proposal: str) -> None:
        self.auctions.labels(outcome, proposal).inc()

    def auction_served(self, timings: AuctionTimings, candidates: int, effective_sample_size: float) -> None:
        for stage in STAGES:
            self.stage_seconds.labels(stage).observe(getattr(timings, stage) / 1000)
        self.candidates.observe(candidates)
        self.effective_sample_size.observe(effective_sample_size)

    def revenue_billed(self, currency: str, amount: float) -> None:
        self.revenue.labels(currency).inc(amount)

    def campaign_counted(self, outcome: str) -> None:
        self.campaigns.labels(outcome).inc()

    def no_fill_counted(self, reason: str) -> None:
        self.no_fills.labels(reason).inc()

    # --- WorkerObserver ----------------------------------------------------------------------------

    def worker_request_failed(self, url: str, kind: str) -> None:
        self.worker_errors.labels(url, kind).inc()

    def worker_request_hedged(self, url: str) -> None:
        self.worker_hedges.labels(url).inc()

    def worker_breaker(self, url: str, letting_traffic: bool) -> None:
        self.worker_up.labels(url).set(1 if letting_traffic else 0)

    def worker_ejected(self, url: str) -> None:
        self.worker_ejections.labels(url).inc()

    # --- RedisObserver -----------------------------------------------------------------------------

    def redis_writability(self, writable: bool) -> None:
        self.redis_writable.set(1 if writable else 0)

    def redis_memory(self, used_bytes: int, maxmemory_bytes: int) -> None:
        self.redis_used_memory.set(used_bytes)
        self.redis_maxmemory.set(maxmemory_bytes)

    def redis_restarted(self) -> None:
        self.redis_restarts.inc()


class AdmissionMetrics:
    """`app.auction.admission`'s metrics (an `AdmissionObserver`), in the registry it is given."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.in_flight = Gauge("mosaic_admission_in_flight", "Auctions running.", registry=registry)
        self.waiting = Gauge(
            "mosaic_admission_queue_depth", "Auctions waiting for admission.", registry=registry
        )
        self.tokens = Gauge(
            "mosaic_admission_tokens_in_flight",
            "Worker tokens the running auctions may cost.",
            registry=registry,
        )
        self.wait_seconds = Histogram(
            "mosaic_admission_wait_seconds",
            "Time from arrival to admission (admitted auctions).",
            buckets=_WAIT_BUCKETS,
            registry=registry,
        )
        self.refused = Counter(
            "mosaic_admission_refused_total", "Auctions refused 429, by limit.", ["reason"], registry=registry
        )

    def admission_load(self, in_flight: int, waiting: int, tokens_in_flight: int) -> None:
        self.in_flight.set(in_flight)
        self.waiting.set(waiting)
        self.tokens.set(tokens_in_flight)

    def admission_waited(self, seconds: float) -> None:
        self.wait_seconds.observe(seconds)

    def admission_refused(self, reason: str) -> None:
        self.refused.labels(reason=reason).inc()
