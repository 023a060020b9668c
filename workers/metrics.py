"""The worker's Prometheus metrics, named and labelled as vLLM's (``vllm/v1/metrics/loggers.py``).

Every ``vllm:*`` series carries ``model_name`` and ``engine`` (vLLM's engine index; one engine per
worker here, so ``"0"``), so a vLLM dashboard reads a MOSAIC worker unchanged. Invariants:

* ``vllm:request_success_total`` counts finished **requests** (one per ``/v1/completions`` answer,
  whatever ``n`` or the batch size), labelled ``finished_reason="length"`` when any choice hit
  ``max_tokens`` and ``"stop"`` otherwise.
* ``vllm:time_to_first_token_seconds``: request arrival to its first drawn token;
  ``vllm:inter_token_latency_seconds``: the gaps between the decode steps of the request's longest
  choice (one observation per step, as vLLM observes one per output token of a request).
* ``vllm:request_prompt_tokens`` / ``vllm:request_generation_tokens``: per-request histograms; the
  ``*_tokens_total`` counters add the same numbers up.

Each app has a registry of its own (two workers in one process never clash). Imports
``prometheus_client`` and :mod:`workers.engine.types` (the ``Sample`` type) only.
See docs/DESIGN.md (the LLM worker) for the invariants and figures.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from workers.engine.types import Sample

ENGINE_INDEX = "0"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
# vLLM's buckets for TTFT and inter-token latency (seconds)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
_LABELS = ["model_name", "engine"]
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)


class WorkerMetrics:
    """vLLM-named metrics of one worker app (see the module docs for what each one counts)."""

    def __init__(self, model_name: str) -> None:
        self.registry = registry = CollectorRegistry()
        self.model_name = model_name
        self.label_values = (model_name, ENGINE_INDEX)
        self.running = Gauge(
            "vllm:num_requests_running", "Requests being processed by the model.", _LABELS, registry=registry
        )
        self.waiting = Gauge(
            "vllm:num_requests_waiting", "Requests waiting for the model.", _LABELS, registry=registry
        )
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Prefill tokens processed.", _LABELS, registry=registry
        )
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Generation tokens processed.", _LABELS, registry=registry
        )
        self.request_success = Counter(
            "vllm:request_success",
            "Finished requests by finish reason.",
            [*_LABELS, "finished_reason"],
            registry=registry,
        )
        self._histograms(registry)
        self.http_latency = Histogram(
            "mosaic_worker_http_request_duration_seconds",
            "HTTP request latency by route and status.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        for gauge in (self.running, self.waiting):
            gauge.labels(*self.label_values).set(0)

    def _histograms(self, registry: CollectorRegistry) -> None:
        """The per-request histograms (vLLM's names and buckets)."""

        def histogram(name: str, documentation: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, documentation, _LABELS, buckets=buckets, registry=registry)

        self.e2e_latency = histogram(
            "vllm:e2e_request_latency_seconds", "End-to-end latency of completion requests.", LATENCY_BUCKETS
        )
        self.queue_time = histogram(
            "vllm:request_queue_time_seconds",
            "Time a completion request waited for the model.",
            LATENCY_BUCKETS,
        )
        self.ttft = histogram(
            "vllm:time_to_first_token_seconds",
            "Time from a request's arrival to its first generated token.",
            TTFT_BUCKETS,
        )
        self.itl = histogram(
            "vllm:inter_token_latency_seconds",
            "Time between consecutive decode steps of a request.",
            ITL_BUCKETS,
        )
        self.request_prompt_tokens = histogram(
            "vllm:request_prompt_tokens", "Prompt tokens per request.", TOKEN_BUCKETS
        )
        self.request_generation_tokens = histogram(
            "vllm:request_generation_tokens", "Generated tokens per request.", TOKEN_BUCKETS
        )

    def finished(self, start: float, end: float, prompt_tokens: int, samples: Sequence[Sample]) -> None:
        """Record one finished ``/v1/completions`` request (``start``/``end``: ``perf_counter``)."""
        values = self.label_values
        generated = sum(len(s.token_ids) for s in samples)
        self.prompt_tokens.labels(*values).inc(prompt_tokens)
        self.generation_tokens.labels(*values).inc(generated)
        self.request_prompt_tokens.labels(*values).observe(prompt_tokens)
        self.request_generation_tokens.labels(*values).observe(generated)
        reason = "length" if any(s.finish_reason == "length" for s in samples) else "stop"
        self.request_success.labels(*values, reason).inc()
        self.e2e_latency.labels(*values).observe(end - start)
        firsts = [s.token_times[0] for s in samples if s.token_times]
        if firsts:
            self.ttft.labels(*values).observe(max(0.0, min(firsts) - start))
            longest = max(samples, key=lambda s: len(s.token_times)).token_times
            itl = self.itl.labels(*values)
            for before, after in itertools.pairwise(longest):
                itl.observe(after - before)
