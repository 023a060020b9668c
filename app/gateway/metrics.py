"""Prometheus metrics of the gateway (DESIGN.md § Observability), in a per-app registry.

A registry per app (not the process default) lets tests and the CLI build several apps in one process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

STAGES = ("tokenize", "generate", "score", "mechanism", "billing", "total")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http_requests = Histogram(
            "mosaic_http_request_duration_seconds",
            "HTTP request latency by route and status.",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "mosaic_auction_stage_seconds",
            "Latency of each stage of an auction.",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.auctions = Counter(
            "mosaic_auctions_total", "Auctions by outcome.", ["outcome", "proposal"], registry=self.registry
        )
        self.candidates = Histogram(
            "mosaic_auction_candidates",
            "Candidates (M) per auction.",
            buckets=(1, 2, 4, 8, 16, 20, 32, 64, 128, 256, 512, 1024),
            registry=self.registry,
        )
        self.effective_sample_size = Histogram(
            "mosaic_auction_effective_sample_size",
            "Effective sample size 1/Σπ² of the allocation.",
            buckets=(1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128),
            registry=self.registry,
        )
        # A gauge, not a counter: a payment can be negative (a credit), and counters only go up.
        self.revenue = Gauge(
            "mosaic_revenue_cumulative",
            "Platform revenue billed since start (currency units).",
            ["currency"],
            registry=self.registry,
        )
        self.worker_errors = Counter(
            "mosaic_worker_errors_total",
            "Failed worker requests.",
            ["worker", "kind"],
            registry=self.registry,
        )
        self.billing_stream_length = Gauge(
            "mosaic_billing_stream_length", "Entries in the billing stream.", registry=self.registry
        )
        self.billing_pending = Gauge(
            "mosaic_billing_pending",
            "Billing events delivered but not yet acknowledged.",
            registry=self.registry,
        )
        self.dead_letters = Gauge(
            "mosaic_ledger_dead_letters",
            "Billing events the ledger set aside as dead letters (should stay 0).",
            registry=self.registry,
        )
        self.conflicts = Gauge(
            "mosaic_ledger_conflicts",
            "Billing events whose id came again with a different body (should stay 0).",
            registry=self.registry,
        )
        self.reconcile_differences = Gauge(
            "mosaic_ledger_reconcile_differences",
            "Differences found by the last `mosaic ledger reconcile` (absent before the first run).",
            registry=self.registry,
        )
        self.reconcile_timestamp = Gauge(
            "mosaic_ledger_reconcile_timestamp_seconds",
            "Unix time of the last `mosaic ledger reconcile`.",
            registry=self.registry,
        )
        self.ready = Gauge(
            "mosaic_ready",
            "1 when the gateway is ready (a worker and Redis answer, as /readyz), else 0.",
            registry=self.registry,
        )
        self.billing_lag = Gauge(
            "mosaic_billing_lag",
            "Billing events not yet delivered to the ledger group.",
            registry=self.registry,
        )
        self.worker_up = Gauge(
            "mosaic_worker_up",
            "1 while the worker's circuit breaker lets traffic through (closed or half-open), 0 ejected.",
            ["worker"],
            registry=self.registry,
        )
        self.worker_ejections = Counter(
            "mosaic_worker_ejections_total",
            "Times the worker was ejected (WORKER_EJECT_FAILURES consecutive failures).",
            ["worker"],
            registry=self.registry,
        )
        self.worker_hedges = Counter(
            "mosaic_worker_hedges_total",
            "Requests re-sent to another worker because this one was slow past the hedge delay.",
            ["worker"],
            registry=self.registry,
        )
        self.redis_writable = Gauge(
            "mosaic_redis_writable",
            "1 while Redis accepts writes (last probe), 0 when down or full (POST /auction answers 503).",
            registry=self.registry,
        )
        self.redis_used_memory = Gauge(
            "mosaic_redis_used_memory_bytes", "Redis used_memory (INFO memory).", registry=self.registry
        )
        self.redis_maxmemory = Gauge(
            "mosaic_redis_maxmemory_bytes", "Redis maxmemory (0: no limit).", registry=self.registry
        )
        self.redis_memory_budget = Gauge(
            "mosaic_redis_memory_budget_bytes",
            "Steady-state Redis memory of the audit records and the ledger at SIZING_AUCTIONS_PER_S "
            "(DEPLOY.md formula); keep maxmemory above it.",
            registry=self.registry,
        )
        self.redis_restarts = Counter(
            "mosaic_redis_restarts_total",
            "Restarts of the embedded Redis by its supervisor.",
            registry=self.registry,
        )
