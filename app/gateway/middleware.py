"""ASGI middleware of the gateway: the body-size limit (before parsing), per-route request metrics and
the router's trailing-slash redirect (`add_slash_redirect`: a relative Location, never from `Host`)
and a 405's `Allow` naming every method of the path (`add_method_not_allowed`).

Imports only the gateway's metrics; knows nothing of auctions or billing.
See docs/DESIGN.md § Errors and limits.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, get_route_path

from app.gateway.metrics import GatewayMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# RFC 9110 §9 and PATCH (RFC 5789): the `method` label's values; any other method is counted as "other".
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})


class BodySizeLimit:
    """Refuse bodies over MAX_BODY_BYTES before they are parsed: 413 (RFC 9110 §15.5.14) naming `body`.

    The body has the 422 shape (`detail`, one entry at loc ["body"]) so clients read one error format.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send, int(declared))
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLargeError(received)
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _BodyTooLargeError as error:
            await self._refuse(scope, receive, send, error.size)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, size: int) -> None:
        response = JSONResponse(
            status_code=413,
            content={
                "detail": [
                    {
                        "type": "limit_exceeded",
                        "loc": ["body"],
                        "msg": f"request body of {size} bytes exceeds MAX_BODY_BYTES={self.max_bytes}",
                        "ctx": {"limit": self.max_bytes},
                    }
                ]
            },
        )
        await response(scope, receive, send)


class _BodyTooLargeError(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


class RequestMetrics:
    """Latency of every request by method, route template and status (`mosaic_http_request_*`).

    Every label takes a bounded set of values whatever clients send: the method is one of
    KNOWN_METHODS or "other", the route the matched route's template (never the path) or
    "unmatched", the status a three-digit code.

    A plain ASGI middleware, not Starlette's BaseHTTPMiddleware: that one hides the client's
    `http.disconnect` from the app, and the auction route must see it (an abandoned request).
    """

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def observing_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observing_send)
        finally:
            # Bounded label values (a series per value): the method folded, the route's template only.
            method = scope.get("method", "")
            method = method if method in KNOWN_METHODS else "other"
            template = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.http_requests.labels(method, template, str(status)).observe(
                time.perf_counter() - started
            )


def add_request_metrics(app: FastAPI, metrics: GatewayMetrics) -> None:
    app.add_middleware(RequestMetrics, metrics=metrics)


class SlashRedirect:
    """The router's fallback when no route matches: 307 to the same path without (or with) its
    trailing slash when a route matches that, else the router's 404.

    Starlette's own redirect (`redirect_slashes`) builds an absolute URL from the request's `Host`
    header, so `Host: evil.example` made the gateway redirect clients off-site. Here Location is a
    path reference (RFC 9110 §10.2.2 allows relative references): the path as requested, with one
    leading slash (a `//host` reference would leave the site), and the query.
    """

    def __init__(self, app: FastAPI) -> None:
        self.router = app.router
        self.not_found = app.router.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        location = self._location(scope) if scope["type"] == "http" else None
        if location is None:
            await self.not_found(scope, receive, send)
            return
        await RedirectResponse(location, status_code=307)(scope, receive, send)

    def _location(self, scope: Scope) -> str | None:
        route_path, path = get_route_path(scope), scope["path"]
        if route_path == "/" or route_path.startswith("//"):
            return None
        other = dict(scope, path=path.rstrip("/") if path.endswith("/") else path + "/")
        if not any(route.matches(other)[0] != Match.NONE for route in self.router.routes):
            return None
        query = scope.get("query_string", b"").decode("latin-1")
        return "/" + quote(other["path"].lstrip("/")) + (f"?{query}" if query else "")


def add_slash_redirect(app: FastAPI) -> None:
    """Replace the router's trailing-slash redirect with `SlashRedirect`."""
    app.router.redirect_slashes = False
    app.router.default = SlashRedirect(app)


def _leaf_routes(routes: Any) -> Any:
    """The routes, with those of included routers (FastAPI ≥ 0.165 wraps them) in their place."""
    for route in routes:
        included = getattr(route, "original_router", None)
        yield from _leaf_routes(included.routes) if included is not None else (route,)


def add_method_not_allowed(app: FastAPI) -> None:
    """A 405's `Allow` lists the methods of every route of that path (RFC 9110 §15.5.6): Starlette's
    names only the first route that matched the path (`/campaigns/{id}` has GET and PATCH routes)."""
    router = app.router

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> Response:
        if error.status_code != 405:
            return await http_exception_handler(request, error)
        methods = {
            method
            for route in _leaf_routes(router.routes)
            if route.matches(request.scope)[0] == Match.PARTIAL
            for method in getattr(route, "methods", None) or ()
        }
        headers = {"Allow": ", ".join(sorted(methods))} if methods else dict(error.headers or {})
        return JSONResponse(status_code=405, content={"detail": error.detail}, headers=headers)
