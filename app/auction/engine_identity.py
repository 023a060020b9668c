"""Which engine answered a worker request, and what that engine is (issue 35).

Job: `EngineIdentities.engine_id(client, header)` turns an answer into the id of the engine that gave
it. Our worker names itself on every answer (header ``X-Mosaic-Engine``: the SHA-256 of its identity's
RFC 8785 JSON, `workers.identity`); the identity itself (model, weights hash, build, dtype, threads,
kernels, hardware class: what bit-identity of the log-probs depends on) is read once per id from the
worker's ``GET /version`` and kept. A worker without the header (a stock vLLM) is identified by its
``/version`` answer, once per worker URL. The auction record's `engine` names these identities
(`app.auction.engine_record`). Reading an identity never fails an auction: an unreadable one is
recorded as such (``{"unread": why}``) and read again after UNREAD_RETRY_S (not on every answer).
Imports httpx, rfc8785 and the worker's wire models (`workers.protocol`); see docs/DESIGN.md
§ Verifiable auctions.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

import httpx
import rfc8785
from pydantic import ValidationError

from workers.protocol import ENGINE_HEADER, VersionResponse

logger = logging.getLogger(__name__)

__all__ = ["ENGINE_HEADER", "EngineIdentities", "identity_digest", "read_identity"]

IDENTITY_TIMEOUT_S = 5.0
UNREAD_RETRY_S = 30.0  # an identity that could not be read is read again after this long


def identity_digest(identity: dict[str, Any]) -> str:
    """SHA-256 (hex) of an identity's RFC 8785 JSON: the worker's own rule (`workers.identity`)."""
    return hashlib.sha256(rfc8785.dumps(identity)).hexdigest()


async def read_identity(client: httpx.AsyncClient) -> tuple[str, dict[str, Any], bool]:
    """(id, identity, final) of the worker behind `client`, from its ``GET /version``.

    Our worker: its ``mosaic_engine`` and id (checked: the id must be the identity's digest). Another
    server (a stock vLLM): ``{"server_version": version}``, id its digest. `final` is False when the
    answer could not be read (a fault worth another try), True otherwise."""
    try:
        response = await client.get("/version", timeout=IDENTITY_TIMEOUT_S)
    except httpx.HTTPError as error:
        return "", {"unread": f"GET /version: {type(error).__name__}"}, False
    if response.status_code == 404:
        identity: dict[str, Any] = {"unread": "the worker has no GET /version"}
        return identity_digest(identity), identity, True
    try:
        response.raise_for_status()
        version = VersionResponse.model_validate_json(response.content)
    except (httpx.HTTPStatusError, ValidationError) as error:
        return "", {"unread": f"GET /version: {str(error)[:200]}"}, False
    if version.mosaic_engine is None:
        identity = {"server_version": version.version}
        return identity_digest(identity), identity, True
    digest = identity_digest(version.mosaic_engine)
    if version.mosaic_engine_id != digest:
        identity = {"unread": f"GET /version: mosaic_engine_id {version.mosaic_engine_id} is not its digest"}
        return digest, identity, True
    return digest, version.mosaic_engine, True


class EngineIdentities:
    """Engine ids seen in answers → their identities; read once each (concurrent first reads share one)."""

    def __init__(self) -> None:
        self.known: dict[str, dict[str, Any]] = {}  # engine id -> identity
        self._ids: dict[str, str] = {}  # header, or the URL of a worker without one -> engine id
        self._pending: dict[str, asyncio.Future[tuple[str, dict[str, Any], bool]]] = {}
        self._unread: dict[str, tuple[float, str]] = {}  # key -> (read again after, id recorded)

    async def engine_id(self, client: httpx.AsyncClient, header: str | None) -> str:
        """The id of the engine behind an answer from `client` that carried `header`."""
        key = header or f"url:{client.base_url}"
        known = self._ids.get(key)
        if known is not None:
            return known
        unread = self._unread.get(key)
        if unread is not None and time.monotonic() < unread[0]:  # no GET /version per answer
            return unread[1]
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(read_identity(client))
            self._pending[key] = pending
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        engine_id, identity, final = await asyncio.shield(pending)
        if header and engine_id != header:  # restarted as another engine since it answered
            engine_id = header
            identity = {"unread": "the worker's identity changed after it answered"}
            final = False
        if not engine_id:
            engine_id = identity_digest(identity)
        self.known[engine_id] = identity
        if final:
            self._ids[key] = engine_id
            self._unread.pop(key, None)
        else:
            self._unread[key] = (time.monotonic() + UNREAD_RETRY_S, engine_id)
            logger.warning("worker identity not read", extra={"worker": str(client.base_url), **identity})
        return engine_id
