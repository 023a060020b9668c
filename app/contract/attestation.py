"""The `attestation` of a stored auction record and of an advertiser's sealed view (the API's models).

A record's attestation (`RecordAttestation`) is the signed statement (`AttestationStatement`: the
record's digests, per candidate and per advertiser's salted part), its Ed25519 signature and the
salts; a sealed view carries `SealedAttestation` instead (the statement, the signature, HER salt, the
shared part and her part: what she needs to verify them, nothing of the others). Built by
`app.attestation`; checked by `app.verification` and `mosaic verify`. The statement keeps fields it
does not name (`extra="allow"`): a later version's statement still verifies through these models.
Imports pydantic only; see docs/DESIGN.md § Verifiable auctions.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# Where the gateway serves its signing keys (a JWK set; no API key).
KEYS_PATH = "/.well-known/mosaic-keys"


class AttestationStatement(BaseModel):
    """What is signed (Ed25519 over its RFC 8785 bytes); also the auction's transparency-log entry."""

    model_config = ConfigDict(extra="allow")

    v: int = Field(description="The statement's version (1).")
    kid: str = Field(description="The signing key's id (its RFC 7638 thumbprint; /.well-known/mosaic-keys).")
    auction_id: str
    created_at_ms: int
    record_sha256: str = Field(
        description="SHA-256 (hex) of the record's RFC 8785 JSON without `attestation` and `billing` "
        "(the charge's state, which changes after the record is written)."
    )
    shared_sha256: str = Field(
        description="SHA-256 of the shared part (what every participant reads alike), each candidate "
        "row replaced by its digest."
    )
    candidates_sha256: list[str] = Field(description="SHA-256 of each candidate's shared row, in order.")
    parts_sha256: list[str] = Field(
        description="SHA-256 of each advertiser's salted part `[salt, part]`, sorted (whose is whose "
        "stays sealed)."
    )


class RecordAttestation(BaseModel):
    """A full record's attestation (the platform's and an auditor's view)."""

    statement: AttestationStatement
    signature: str = Field(description="Ed25519 over the statement's RFC 8785 bytes, base64url.")
    salts: dict[str, str] = Field(description="The 128-bit salt of each advertiser's part, base64url.")


class SealedAttestation(BaseModel):
    """What an advertiser's sealed view carries to verify her part, the shared part and the aggregate."""

    statement: AttestationStatement
    signature: str = Field(description="Ed25519 over the statement's RFC 8785 bytes, base64url.")
    salt: str = Field(description="Her part's salt: SHA-256 of `[salt, part]` is one of `parts_sha256`.")
    shared: dict[str, Any] = Field(description="The shared part, as committed (`shared_sha256`).")
    part: dict[str, Any] = Field(
        description="Her part, as committed: her request entry, her outcome row, her billed micro-units, "
        "her budget fit, and per candidate her reward and the others' rewards summed."
    )


class PublicJwk(BaseModel):
    """One Ed25519 public key (RFC 8037) with its status."""

    kid: str = Field(description="RFC 7638 thumbprint of the key: the statement's `kid`.")
    kty: str = Field("OKP", description="OKP (octet key pair).")
    crv: str = Field("Ed25519")
    alg: str = Field("EdDSA")
    use: str = Field("sig")
    x: str = Field(description="The 32-byte public key, base64url.")
    status: str = Field(
        description="`active` (signs new records) or `retired` (signed earlier ones; kept to verify them)."
    )


class JwkSet(BaseModel):
    """`GET /.well-known/mosaic-keys`: every key a record may be signed with, the active one first."""

    keys: list[PublicJwk]
