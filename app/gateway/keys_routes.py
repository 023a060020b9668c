"""`GET /.well-known/mosaic-keys`: the public keys that sign auction records, as a JWK set.

Job: serve the auction service's signing key ring (`app.attestation.keys.jwks`): the active key and
every retired one (records they signed keep verifying), each with its `kid` (RFC 7638 thumbprint)
and `status`. No API key: anyone who holds a record may check it. Cacheable for a few minutes (a
rotation shows after at most `max-age`; a retired key is never removed, so a cached set never
fails a record it once verified). Imports FastAPI, the gateway's deps and `app.attestation` /
`app.contract` only; see docs/DESIGN.md § Verifiable auctions.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.attestation.keys import jwks
from app.contract.attestation import KEYS_PATH, JwkSet
from app.gateway.deps import AuctionServiceDep

CACHE_CONTROL = "public, max-age=300"

router = APIRouter(tags=["verification"])


@router.get(
    KEYS_PATH,
    response_model=JwkSet,
    summary="The Ed25519 public keys that sign auction records (JWK set; active and retired)",
    description="`kid` is the RFC 7638 thumbprint the signed statement names; `status` is `active` "
    "(signs new records) or `retired` (kept so that the records it signed still verify). No API key.",
)
async def signing_keys(service: AuctionServiceDep, response: Response) -> JwkSet:
    response.headers["Cache-Control"] = CACHE_CONTROL
    return JwkSet.model_validate(jwks(service.signing_keys))
