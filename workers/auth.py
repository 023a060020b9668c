"""The worker's API key, as vLLM's ``--api-key``: a bearer token on the routes that cost compute.

vLLM's server (``AuthenticationMiddleware``) checks ``Authorization: Bearer <key>`` on every path
under ``/v1`` except OPTIONS, compares SHA-256 digests, and answers 401 ``{"error": "Unauthorized"}``.
This worker does the same and also guards ``/tokenize`` (vLLM leaves it open; here it is model work
that nobody outside the gateway needs). ``/health`` and ``/metrics`` stay open, for probes and
Prometheus. Imports nothing of the project.
See docs/DESIGN.md (the LLM worker) for the invariants and figures.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.responses import JSONResponse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PROTECTED_PREFIXES = ("/v1", "/tokenize", "/detokenize")


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


class BearerKeyMiddleware:
    """401 unless the request carries the worker's key (checked on `PROTECTED_PREFIXES` only)."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        if not api_key.strip():
            raise ValueError("the worker's API key is empty")
        self.app = app
        self.key_digest = _digest(api_key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") == "OPTIONS"
            or not str(scope.get("path", "")).startswith(PROTECTED_PREFIXES)
        ):
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(_digest(token.strip()), self.key_digest):
            await self.app(scope, receive, send)
            return
        await JSONResponse({"error": "Unauthorized"}, status_code=401)(scope, receive, send)
