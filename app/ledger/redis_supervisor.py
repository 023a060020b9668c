"""Keeps the embedded Redis alive: restarts it from its AOF when it dies, with back-off.

Job: `RedisSupervisor.run` watches the ``redis-server`` child that this process started
(`app.ledger.redis_store.RedisServer`, only in the embedded default; an external REDIS_URL is the
platform's to supervise). When the child has exited (SIGKILL, OOM killer, crash) it is started again
on the same directory and socket, so it reloads its AOF (``appendfsync always``: every acknowledged
billing event is in it) and the clients reconnect to the same URL. Failed starts are retried after
0.05 s, doubling up to REDIS_RESTART_MAX_BACKOFF_S. If Redis stays down longer than
REDIS_RESTART_GIVE_UP_S, `alive` turns False and ``/healthz`` answers 503, so the liveness probe
(k8s, compose, systemd) restarts the whole process. Imports app.settings, app.ledger.redis_store and
app.ledger.observers only (restarts go to a `RedisObserver`); see docs/DESIGN.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from app.ledger.observers import NoopRedisObserver, RedisObserver
from app.ledger.redis_store import RedisServer, RedisServerError
from app.settings import Settings

logger = logging.getLogger(__name__)

POLL_S = 0.1
FIRST_BACKOFF_S = 0.05


class RedisSupervisor:
    """Restarts a dead embedded Redis; `alive` is the process's liveness as far as Redis goes."""

    def __init__(
        self,
        server: RedisServer,
        settings: Settings,
        observer: RedisObserver | None = None,
        on_restart: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.server = server
        self.settings = settings
        self.observer = observer or NoopRedisObserver()
        self.on_restart = on_restart
        self.restarts = 0
        self.down_since: float | None = None
        self.last_error = ""

    @property
    def alive(self) -> bool:
        if self.down_since is None:
            return True
        return time.monotonic() - self.down_since <= self.settings.redis_restart_give_up_s

    @property
    def cause(self) -> str:
        if self.alive:
            return ""
        return (
            f"embedded Redis down for over REDIS_RESTART_GIVE_UP_S={self.settings.redis_restart_give_up_s}s "
            f"and could not be restarted: {self.last_error}"
        )

    async def run(self, stop: asyncio.Event) -> None:
        backoff = FIRST_BACKOFF_S
        while not stop.is_set():
            if self.server.running():
                self.down_since, backoff = None, FIRST_BACKOFF_S
                await _wait(stop, POLL_S)
                continue
            if self.down_since is None:
                self.down_since = time.monotonic()
                code = self.server.process.returncode if self.server.process is not None else None
                logger.error("embedded Redis exited (code %s): restarting it from its AOF", code)
            try:
                timeout = min(15.0, self.settings.redis_restart_give_up_s)
                await asyncio.to_thread(self.server.start, timeout)
            except (RedisServerError, OSError) as error:
                self.last_error = str(error)
                logger.error("embedded Redis did not start (retry in %.2fs): %s", backoff, error)
                await _wait(stop, backoff)
                backoff = min(backoff * 2, self.settings.redis_restart_max_backoff_s)
                continue
            self.restarts += 1
            self.observer.redis_restarted()
            logger.warning(
                "embedded Redis restarted after %.2fs down (restart %d)",
                time.monotonic() - self.down_since,
                self.restarts,
            )
            self.down_since, self.last_error = None, ""
            if self.on_restart is not None:
                with contextlib.suppress(Exception):
                    await self.on_restart()


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
