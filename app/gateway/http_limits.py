"""The HTTP server's limits against slow or idle clients: uvicorn's settings and a read timeout.

Job: `uvicorn_config(app, settings)` builds the uvicorn Config of `mosaic serve` from Settings
(keep-alive timeout, concurrency limit, listen backlog, header size) and an HTTP protocol class that
closes a connection whose client is too slow to send its request: uvicorn (0.55) has a keep-alive
timeout but none for reading a request, so a client that opens connections and sends nothing, or half
a request line, or a body that never ends, holds each connection (and a file descriptor) forever.
Imports uvicorn and app.settings only.

The head size (`HeadSizeLimitMixin`): uvicorn's only header limit, `h11_max_incomplete_event_size`,
binds h11, but uvicorn[standard] runs httptools, which keeps every header line whole however long
(512 lines of 1 MB on `GET /healthz` were answered 200 and left the gateway 440 MB bigger; a chunked
body's trailer section, parsed as header lines too, grew it as long as the body timeout let it). The
httptools protocol here feeds the parser at most HTTP_MAX_HEADER_BYTES bytes of a request that are
not body bytes (request line, header lines, chunk sizes, trailers) and at the first byte past them
answers 431 (RFC 6585 §5; only the close when its response has already begun) and closes the
connection. A request that starts inside the piece that ends the previous one (pipelining) may get
up to twice the limit.

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
import json
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


class HeadSizeLimitMixin:
    """For uvicorn's httptools protocol: 431 and close past `max_head_bytes` of a request that are not
    its body (see the module doc)."""

    max_head_bytes: int = 16384
    transport: asyncio.Transport
    cycle: Any

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._framing = 0  # bytes of this request fed to the parser that were not body bytes

    def on_body(self, body: bytes) -> None:
        self._framing -= len(body)
        super().on_body(body)  # type: ignore[misc]

    def on_message_complete(self) -> None:
        self._framing = 0  # what follows is the next request
        super().on_message_complete()  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        # Fed in pieces no longer than the room left: the parser never holds more than the limit of
        # head, chunk framing and trailers (a body, bounded by MAX_BODY_BYTES, is fed whole).
        while data:
            room = self.max_head_bytes - self._framing
            if room <= 0:
                self._refuse()
                return
            piece, data = (data, b"") if len(data) <= room else (data[:room], data[room:])
            self._framing += len(piece)
            super().data_received(piece)  # type: ignore[misc]
            if self.transport.is_closing():
                return

    def _refuse(self) -> None:
        """431 unless a response on this connection has started (then only the close), and close."""
        logger.info("closing a connection: request head over %d bytes", self.max_head_bytes)
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            detail = {
                "type": "limit_exceeded",
                "loc": ["header"],
                "msg": f"request head (or chunk framing and trailers) over HTTP_MAX_HEADER_BYTES="
                f"{self.max_head_bytes} bytes",
                "ctx": {"limit": self.max_head_bytes},
            }
            body = json.dumps({"detail": [detail]}).encode()
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
            )
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's answer to this request, if any, is dropped
            cycle.message_event.set()
        self.transport.close()


def protocol_class(settings: Settings) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol with the read timeout: httptools (when installed) with the head size
    limit, else h11 (whose own limit, h11_max_incomplete_event_size, answers 400)."""
    attributes: dict[str, Any] = {
        "header_timeout_s": settings.http_header_timeout_s,
        "body_timeout_s": settings.http_body_timeout_s,
    }
    if importlib.util.find_spec("httptools") is None:
        return type("ReadTimeoutH11Protocol", (ReadTimeoutMixin, H11Protocol), attributes)
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    attributes["max_head_bytes"] = settings.http_max_header_bytes
    bases = (ReadTimeoutMixin, HeadSizeLimitMixin, HttpToolsProtocol)
    return type("LimitedHttpToolsProtocol", bases, attributes)


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
