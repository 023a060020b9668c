"""The HTTP server's limits against slow or idle clients: uvicorn's settings and a read timeout.

Job: `uvicorn_config(app, settings)` builds the uvicorn Config of `mosaic serve` from Settings
(keep-alive timeout, concurrency limit, listen backlog, header size) and an HTTP protocol class that
closes a connection whose client is too slow to send its request: uvicorn (0.55) has a keep-alive
timeout but none for reading a request, so a client that opens connections and sends nothing, or half
a request line, or a body that never ends, holds each connection (and a file descriptor) forever.
Imports uvicorn and app.settings only.

The read timeout (`ReadTimeoutMixin`): from the moment a connection waits for a request (accepted, or
its previous response finished), the request head must be complete within HTTP_HEADER_TIMEOUT_S
(a total, not an idle timer: trickling one byte a second does not extend it, unlike a socket
timeout - "slowloris"); after the head, the body must be complete within HTTP_BODY_TIMEOUT_S. Past
either, the connection is closed without an answer. While the app works on a request nothing is
timed here (the auction deadline bounds that); idle keep-alive is uvicorn's HTTP_TIMEOUT_KEEP_ALIVE_S.
See docs/DESIGN.md § Errors and limits.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import time
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.settings import Settings

logger = logging.getLogger(__name__)


class ReadTimeoutMixin:
    """Closes the connection when the client does not send its request in time (see the module doc)."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    transport: asyncio.Transport
    cycle: Any
    loop: asyncio.AbstractEventLoop

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._read_started = time.monotonic()
        self._read_timer: asyncio.TimerHandle | None = None
        self._seen_cycle: Any = None
        self._arm(self.header_timeout_s)

    def _arm(self, seconds: float) -> None:
        self._read_timer = self.loop.call_later(max(0.01, seconds), self._check_read)

    def _waiting_for(self) -> tuple[str, float] | None:
        """What the connection waits for from the client now, and since when; None: not waiting."""
        cycle = self.cycle
        if cycle is None:
            return "head", self._read_started
        if cycle is not self._seen_cycle:  # a new request's head arrived: its body is timed from now
            self._seen_cycle, self._body_started = cycle, time.monotonic()
        if cycle.response_complete:
            # Between requests: uvicorn's keep-alive timer runs until the next request's first byte;
            # from then on the head is ours to time (uvicorn would wait forever).
            return "head", max(self._read_started, getattr(self, "_response_done_at", 0.0))
        if cycle.more_body and not getattr(cycle, "response_started", False):
            return "body", self._body_started
        return None

    def _check_read(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        waiting = self._waiting_for()
        if waiting is None:
            self._arm(min(self.header_timeout_s, self.body_timeout_s))
            return
        part, since = waiting
        limit = self.header_timeout_s if part == "head" else self.body_timeout_s
        left = since + limit - time.monotonic()
        if left > 0:
            self._arm(left)
            return
        logger.info("closing a connection: request %s not received within %.1fs", part, limit)
        self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._response_done_at = time.monotonic()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        super().connection_lost(exc)  # type: ignore[misc]


def protocol_class(settings: Settings) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools when installed, else h11) with the read timeout."""
    base: type[asyncio.Protocol] = H11Protocol
    if importlib.util.find_spec("httptools") is not None:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        base = HttpToolsProtocol
    attributes = {
        "header_timeout_s": settings.http_header_timeout_s,
        "body_timeout_s": settings.http_body_timeout_s,
    }
    return type(f"ReadTimeout{base.__name__}", (ReadTimeoutMixin, base), attributes)


def uvicorn_config(app: Any, settings: Settings) -> uvicorn.Config:
    """The uvicorn Config of `mosaic serve`: every limit from Settings (DEPLOY.md, behind a proxy)."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        http=protocol_class(settings),
        timeout_keep_alive=settings.http_timeout_keep_alive_s,
        limit_concurrency=settings.http_limit_concurrency or None,
        backlog=settings.http_backlog,
        h11_max_incomplete_event_size=settings.http_max_header_bytes,
    )
