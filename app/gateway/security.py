"""Bearer-token authentication from settings (API_KEYS); health routes never use it."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request, status

from app.settings import Settings


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def require_api_key(request: Request) -> None:
    """FastAPI dependency: 401 unless `Authorization: Bearer <key>` names a configured key."""
    keys = _settings(request).api_keys
    if not keys:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    # compare_digest on every key: no early exit that would leak which prefix matched
    valid = scheme.lower() == "bearer" and any(
        hmac.compare_digest(token.encode(), key.encode()) for key in keys
    )
    if not valid:
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing or invalid API key (Authorization: Bearer <key>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
