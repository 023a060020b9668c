"""What the ledger's Redis watchers report: the `RedisObserver` protocol and its no-op.

`app.ledger.redis_health` (writable or not, memory) and `app.ledger.redis_supervisor` (restarts) call
it; the gateway's Prometheus metrics (`app.gateway.metrics`) implement it. Imports nothing of the
project; see docs/DESIGN.md § Observability.
"""

from __future__ import annotations

from typing import Protocol


class RedisObserver(Protocol):
    def redis_writability(self, writable: bool) -> None:
        """The last verdict on Redis: takes an auction's writes now, or not (down, full)."""

    def redis_memory(self, used_bytes: int, maxmemory_bytes: int) -> None:
        """Redis' used_memory and maxmemory (0: no limit), as the last probe read them."""

    def redis_restarted(self) -> None:
        """The supervisor restarted the embedded Redis."""


class NoopRedisObserver:
    """Reports nothing (tests, the ledger's own processes)."""

    def redis_writability(self, writable: bool) -> None:
        pass

    def redis_memory(self, used_bytes: int, maxmemory_bytes: int) -> None:
        pass

    def redis_restarted(self) -> None:
        pass
