"""Bearer-token authentication with two scopes, and the start-up check of the configured keys.

Scopes: a *platform* key (API_KEYS) runs auctions and reads everything; an *advertiser* key
(ADVERTISER_API_KEYS, bound to one advertiser id) reads only that advertiser's ledger account and the
auctions it took part in, and cannot run auctions. A key is configured either as the token itself or
as ``sha256:<64 hex>`` (the SHA-256 of the token), so a deployment's config need not hold the secret.
Presented tokens are hashed and compared with `hmac.compare_digest` against every configured digest:
no early exit that would tell which key came close.

At start (`check_key_settings`): an empty or blank key entry, or a known placeholder (the values
shipped in docker-compose.yml and k8s/secret.yaml), refuses to start unless ALLOW_INSECURE_KEYS=true
(development only); no key at all turns auth off, with a warning in the log. Health routes never
ask for a key (`/readyz` shows its details to a platform key only: `caller`). Imports only the
settings. See docs/DESIGN.md § Errors and limits.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from dataclasses import dataclass
from typing import Literal

from fastapi import HTTPException, Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.settings import Settings

logger = logging.getLogger(__name__)

# Values that have been shipped in this repository's examples, and the usual stand-ins.
KNOWN_PLACEHOLDER_KEYS = frozenset(
    {
        "mosaic-local-dev-key",
        "change-me-api-key",
        "change-me-worker-api-key",
        "change-me",
        "changeme",
        "secret",
        "password",
        "api-key",
        "apikey",
        "test",
    }
)
_DIGEST = re.compile(r"sha256:([0-9a-fA-F]{64})")

Scope = Literal["platform", "advertiser", "open"]


class InsecureKeysError(ValueError):
    """The configured keys must not be used (empty entry or a known placeholder)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: `open` when auth is off (every route allowed)."""

    scope: Scope
    advertiser_id: str | None = None
    # Which key called (a short SHA-256 prefix of the token; "open" without auth, never the token):
    # what idempotency keys are scoped by and per-key admission limits count by.
    key_id: str = "open"

    def may_read_advertiser(self, advertiser_id: str) -> bool:
        return self.scope != "advertiser" or self.advertiser_id == advertiser_id

    @property
    def sealed_to(self) -> str | None:
        """The advertiser whose sealed view this key reads (None: the full record, platform or open)."""
        return self.advertiser_id if self.scope == "advertiser" else None


def digest_of(key: str) -> bytes:
    """The SHA-256 a configured key stands for: given as ``sha256:<hex>``, or of the token itself."""
    match = _DIGEST.fullmatch(key.strip())
    if match:
        return bytes.fromhex(match.group(1))
    return hashlib.sha256(key.encode()).digest()


def _problems(keys: list[str], setting: str) -> list[str]:
    problems = []
    for index, key in enumerate(keys):
        if not key.strip():
            problems.append(f"{setting}[{index}] is empty (a bare 'Authorization: Bearer' would match it)")
        elif key.strip().lower() in KNOWN_PLACEHOLDER_KEYS:
            problems.append(f"{setting}[{index}] is the known placeholder {key.strip()!r}")
    return problems


def check_key_settings(settings: Settings) -> None:
    """Refuse insecure keys (unless ALLOW_INSECURE_KEYS) and warn when authentication is off."""
    problems = _problems(settings.api_keys, "API_KEYS")
    for advertiser_id, keys in settings.advertiser_api_keys.items():
        problems += _problems(keys, f"ADVERTISER_API_KEYS[{advertiser_id!r}]")
    if settings.worker_api_key is not None and settings.worker_api_key.strip():
        problems += _problems([settings.worker_api_key], "WORKER_API_KEY")
    if problems and not settings.allow_insecure_keys:
        raise InsecureKeysError(
            "refusing to start: " + "; ".join(problems) + ". Set real keys (or their sha256: digests); "
            "ALLOW_INSECURE_KEYS=true accepts them for local development only."
        )
    if problems:
        logger.warning("insecure API keys accepted (ALLOW_INSECURE_KEYS=true)", extra={"problems": problems})
    if not settings.api_keys and not settings.advertiser_api_keys:
        logger.warning(
            "authentication is OFF: API_KEYS is empty, every route is open (set API_KEYS in production)"
        )


class KeyRing:
    """The configured keys as digests, with the scope each one grants."""

    def __init__(self, settings: Settings) -> None:
        self.platform = [digest_of(key) for key in settings.api_keys if key.strip()]
        self.advertisers = [
            (digest_of(key), advertiser_id)
            for advertiser_id, keys in settings.advertiser_api_keys.items()
            for key in keys
            if key.strip()
        ]
        self.enabled = bool(settings.api_keys or settings.advertiser_api_keys)

    def identify(self, token: str) -> Principal | None:
        presented = hashlib.sha256(token.encode()).digest()
        platform = False
        for digest in self.platform:  # every comparison runs: constant time over the key set
            platform |= hmac.compare_digest(presented, digest)
        advertiser: str | None = None
        for digest, advertiser_id in self.advertisers:
            if hmac.compare_digest(presented, digest):
                advertiser = advertiser_id
        key_id = presented[:16].hex()
        if platform:
            return Principal("platform", key_id=key_id)
        if advertiser is not None:
            return Principal("advertiser", advertiser, key_id=key_id)
        return None


def _unauthorized() -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail="missing or invalid API key (Authorization: Bearer <key>)",
        headers={"WWW-Authenticate": "Bearer"},
    )


# Declares the scheme in the OpenAPI document (clients and fuzzers see which routes need a key); the
# header itself is parsed below, so a malformed one is a plain 401 like a wrong key.
_BEARER = HTTPBearer(
    auto_error=False,
    description="A platform key (API_KEYS) or an advertiser key (ADVERTISER_API_KEYS).",
)


def caller(request: Request) -> Principal | None:
    """Who sent `request` (`open` when auth is off), or None when it names no configured key."""
    ring: KeyRing | None = getattr(request.app.state, "key_ring", None)
    if ring is None:
        ring = request.app.state.key_ring = KeyRing(request.app.state.settings)
    if not ring.enabled:
        return Principal("open")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return ring.identify(token) if scheme.lower() == "bearer" and token else None


async def require_api_key(
    request: Request, _declared: HTTPAuthorizationCredentials | None = Security(_BEARER)
) -> Principal:
    """FastAPI dependency: the caller, or 401 unless `Authorization: Bearer <key>` names a key."""
    principal = caller(request)
    if principal is None:
        raise _unauthorized()
    return principal


async def require_platform_key(principal: Principal = Security(require_api_key)) -> Principal:
    """As `require_api_key`, and 403 for an advertiser key (it may only read its own account)."""
    if principal.scope == "advertiser":
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN,
            detail=f"this key is scoped to advertiser {principal.advertiser_id!r}: it may read that "
            "advertiser's account and auctions only",
        )
    return principal
