"""The worker's bound on queued work: tokens of the requests accepted but not yet answered.

A completion request costs its prompt tokens plus ``n × max_tokens`` per prompt (the most it can
generate). It is accepted when, with it, the tokens in the worker stay within
``WORKER_MAX_QUEUED_TOKENS``, or when the worker holds nothing else (so a valid request is never refused
for good); otherwise the worker answers 429 with ``Retry-After`` at once, before any model work: never
an unbounded queue. The gateway's admission limits are sized so that this is a safety net (several
gateways on one worker, or a client calling the worker directly). Imports nothing of the project.
See docs/DESIGN.md (the LLM worker) for the invariants and figures.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager


class QueueFullError(Exception):
    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def request_cost(prompt_lengths: list[int], n: int, max_tokens: int) -> int:
    return sum(prompt_lengths) + len(prompt_lengths) * n * max_tokens


class TokenQueue:
    def __init__(self, max_tokens: int, tokens_per_second: float = 2000.0) -> None:
        self.max_tokens = max_tokens
        self.tokens = 0
        self.requests = 0
        self._tokens_per_second = tokens_per_second  # EWMA of the worker's measured rate (Retry-After)

    @contextmanager
    def hold(self, cost: int) -> Iterator[None]:
        if self.requests and self.tokens + cost > self.max_tokens:
            retry = max(1, math.ceil(self.tokens / self._tokens_per_second))
            raise QueueFullError(
                f"the worker holds {self.tokens} queued tokens and this request may cost {cost} "
                f"(WORKER_MAX_QUEUED_TOKENS={self.max_tokens}); retry after {retry} s",
                retry,
            )
        self.tokens += cost
        self.requests += 1
        try:
            yield
        finally:
            self.tokens -= cost
            self.requests -= 1

    def observe(self, tokens: int, seconds: float) -> None:
        """Feed the rate of one finished request (tokens it cost over its time in the worker)."""
        if tokens > 0 and seconds > 0:
            self._tokens_per_second = 0.8 * self._tokens_per_second + 0.2 * (tokens / seconds)
