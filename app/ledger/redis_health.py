"""Can Redis take the writes of an auction now? A cached answer, refreshed in the background.

Job: `RedisHealth` probes Redis every REDIS_PROBE_INTERVAL_S (bounded by REDIS_PROBE_TIMEOUT_S) with
``INFO memory`` and a tiny write (``SET mosaic:health:probe ... PX``), and keeps the result: writable
or not, and why. ``POST /auction`` calls `check()` before any model work (no I/O: the cached state),
so a Redis that is down or full answers 503 naming the cause in milliseconds instead of after all the
generation and scoring; readiness reads the same state. On a Redis Cluster (issue 36) the probe goes to
the ledger shard's primary and its write WAITs for REDIS_WAIT_REPLICAS, as a bill does. Imports redis,
app.settings and app.ledger (cluster, keys, observers) only; see docs/DESIGN.md.

Full means either the probe write failed with ``OOM command not allowed`` (``maxmemory`` reached under
``noeviction``), or ``maxmemory - used_memory`` < REDIS_MIN_FREE_BYTES (room for the audit records of
the auctions in flight: an audit record is ~5-6 KB). The probe key expires by itself and is tiny, so
the probe never fills Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError

from app.ledger.cluster import write_and_wait
from app.ledger.keys import hot_key
from app.ledger.observers import NoopRedisObserver, RedisObserver
from app.settings import Settings

logger = logging.getLogger(__name__)

PROBE_KEY = "mosaic:health:probe"


class RedisUnwritableError(RuntimeError):
    """Redis cannot take an auction's writes now (down or full): 503 before any model work."""


@dataclass
class RedisState:
    writable: bool = False
    cause: str = "Redis not probed yet"
    used_memory: int = 0
    maxmemory: int = 0
    checked_at: float = 0.0  # time.monotonic()


def _mb(value: int) -> str:
    return f"{value / (1 << 20):.1f} MiB"


class RedisHealth:
    """The last write probe's verdict, and the task that keeps it current."""

    def __init__(
        self, redis: aioredis.Redis, settings: Settings, observer: RedisObserver | None = None
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.observer = observer or NoopRedisObserver()
        self.state = RedisState()

    def check(self) -> None:
        """Raise RedisUnwritableError naming the cause unless the last probe found Redis writable."""
        if not self.state.writable:
            raise RedisUnwritableError(self.state.cause)

    def report_failure(self, cause: str) -> None:
        """A write of an auction failed (passive signal): not writable until the next good probe."""
        self._set(RedisState(False, cause, self.state.used_memory, self.state.maxmemory, time.monotonic()))

    async def _info_and_write(self) -> tuple[Any, Any]:
        """INFO memory and the probe write, in one round trip; errors as values. On a Redis Cluster
        both go to the ledger shard's primary, where every bill is written (app.ledger.keys.hot_key),
        and the write WAITs for REDIS_WAIT_REPLICAS like a bill: a shard whose primary has no replica
        to acknowledge is not writable (not ready, early 503) until one joins."""
        s = self.settings
        key, value = hot_key(s, PROBE_KEY), str(int(time.time() * 1000))
        if s.redis_cluster:
            node = self.redis.get_node_from_key(key)  # type: ignore[attr-defined]
            wait_ms = max(1, min(s.redis_wait_timeout_ms, int(s.redis_probe_timeout_s * 500)))
            write = [("SET", key, value, "PX", 60_000)]
            replies = await asyncio.gather(
                self.redis.info("memory", target_nodes=node),
                write_and_wait(
                    self.redis,
                    key,
                    write,
                    transaction=False,
                    replicas=s.redis_wait_replicas,
                    timeout_ms=wait_ms,
                ),
                return_exceptions=True,
            )
            if isinstance(replies[0], BaseException) and not isinstance(replies[0], Exception):
                raise replies[0]
            return replies[0], replies[1]
        pipe = self.redis.pipeline(transaction=False)
        pipe.info("memory")
        pipe.set(key, value, px=60_000)
        info, written = await pipe.execute(raise_on_error=False)
        return info, written

    async def probe(self) -> RedisState:
        timeout = self.settings.redis_probe_timeout_s
        used = maxmemory = 0
        try:
            async with asyncio.timeout(timeout):
                info, written = await self._info_and_write()
        except TimeoutError:
            return self._set(RedisState(False, f"Redis did not answer a write probe within {timeout}s"))
        except (RedisError, OSError) as error:
            return self._set(RedisState(False, f"Redis unreachable: {type(error).__name__}: {error}"))
        if isinstance(info, dict):
            used, maxmemory = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
        if isinstance(written, OutOfMemoryError) or (
            isinstance(written, ResponseError) and "maxmemory" in str(written)
        ):
            cause = f"Redis is full (used {_mb(used)} of maxmemory {_mb(maxmemory)}): OOM {written}"
            return self._set(RedisState(False, cause, used, maxmemory))
        if isinstance(written, Exception):
            cause = f"Redis refused a write: {type(written).__name__}: {written}"
            return self._set(RedisState(False, cause, used, maxmemory))
        if maxmemory and maxmemory - used < self.settings.redis_min_free_bytes:
            cause = (
                f"Redis is nearly full: used {_mb(used)} of maxmemory {_mb(maxmemory)} "
                f"(under REDIS_MIN_FREE_BYTES={self.settings.redis_min_free_bytes} free)"
            )
            return self._set(RedisState(False, cause, used, maxmemory))
        return self._set(RedisState(True, "", used, maxmemory))

    def _set(self, state: RedisState) -> RedisState:
        state.checked_at = state.checked_at or time.monotonic()
        if state.writable != self.state.writable or state.cause != self.state.cause:
            level = logging.INFO if state.writable else logging.ERROR
            logger.log(level, "Redis writable: %s %s", state.writable, state.cause)
        self.state = state
        self.observer.redis_writability(state.writable)
        if state.used_memory or state.maxmemory:  # both 0: not read (Redis did not answer)
            self.observer.redis_memory(state.used_memory, state.maxmemory)
        return state

    async def run(self, stop: asyncio.Event) -> None:
        """Probe every REDIS_PROBE_INTERVAL_S until `stop` is set."""
        while not stop.is_set():
            started = time.monotonic()
            await self.probe()
            pause = max(0.0, self.settings.redis_probe_interval_s - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=pause)
