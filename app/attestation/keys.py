"""The signing keys: an Ed25519 key ring (the active private key + retired public keys) on disk.

Job: `SigningKeyRing` (`active`: the key every new record is signed with — `.kid`, `.sign(data)`; `retired`:
public keys of earlier active keys, still served so that records they signed keep verifying),
`load_keyring(directory)` and `rotate(directory)`, `jwks(ring)` (the JWK set served at
`GET /.well-known/mosaic-keys`, RFC 8037: kty OKP, crv Ed25519, x) and `public_keys(jwk_set)` (the
reverse, for `mosaic verify`). A key id is the RFC 7638 JWK thumbprint of the public key
(base64url SHA-256 of its canonical JWK): derived, never chosen, so it cannot name another key.

On disk (SIGNING_KEY_DIR; empty: DATA_DIR/keys beside the embedded Redis's files): `active.pem`
(PKCS#8 PEM, mode 0600, created once — atomically, so two gateways starting on one directory end up
with the same key — when the directory has none) and `retired/<kid>.pem` (public keys, PEM).
Rotation (`mosaic keys rotate`): the active key's public half is written to `retired/`, a new key
replaces `active.pem`; restart the gateways to sign with it (until then they sign with the old one,
which stays served). Several gateways must share one directory (a mounted secret). Imports
`cryptography`, `app.attestation.canonical` and `app.settings`; see docs/DESIGN.md § Verifiable auctions.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from app.attestation.canonical import canonical_bytes
from app.settings import Settings

logger = logging.getLogger(__name__)

ACTIVE_FILE = "active.pem"
RETIRED_DIR = "retired"
KeyStatus = Literal["active", "retired"]


class Signer(Protocol):
    """What signs a statement or a tree head: a key id and Ed25519 over bytes."""

    @property
    def kid(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def kid_of(key: Ed25519PublicKey) -> str:
    """The RFC 7638 thumbprint of the key's JWK: base64url(SHA-256 of {"crv","kty","x"} canonical)."""
    jwk = {"crv": "Ed25519", "kty": "OKP", "x": b64url(raw_public(key))}
    return b64url(hashlib.sha256(canonical_bytes(jwk)).digest())


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 private key with its derived key id."""

    private: Ed25519PrivateKey
    kid: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kid", kid_of(self.private.public_key()))

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()


@dataclass(frozen=True)
class SigningKeyRing:
    """The active signing key and the retired public keys (verification only)."""

    active: SigningKey
    retired: tuple[Ed25519PublicKey, ...] = ()

    def public_keys(self) -> dict[str, Ed25519PublicKey]:
        keys = {kid_of(key): key for key in self.retired}
        keys[self.active.kid] = self.active.public
        return keys


def jwk(key: Ed25519PublicKey, status: KeyStatus) -> dict[str, str]:
    return {
        "kid": kid_of(key),
        "kty": "OKP",
        "crv": "Ed25519",
        "alg": "EdDSA",
        "use": "sig",
        "x": b64url(raw_public(key)),
        "status": status,
    }


def jwks(ring: SigningKeyRing) -> dict[str, list[dict[str, str]]]:
    """The JWK set served at /.well-known/mosaic-keys: the active key first, then the retired ones."""
    retired = [jwk(key, "retired") for key in ring.retired if kid_of(key) != ring.active.kid]
    return {"keys": [jwk(ring.active.public, "active"), *retired]}


def public_keys(jwk_set: Any) -> dict[str, Ed25519PublicKey]:
    """kid → public key of a JWK set; ValueError naming the entry that is not an Ed25519 key, or whose
    kid is not its thumbprint (a key set cannot pass one key off as another)."""
    if not isinstance(jwk_set, dict) or not isinstance(jwk_set.get("keys"), list):
        raise ValueError('a JWK set is {"keys": [...]}')
    keys: dict[str, Ed25519PublicKey] = {}
    for index, entry in enumerate(jwk_set["keys"]):
        if not isinstance(entry, dict) or entry.get("kty") != "OKP" or entry.get("crv") != "Ed25519":
            raise ValueError(f"keys[{index}]: not an Ed25519 key (kty OKP, crv Ed25519)")
        try:
            key = Ed25519PublicKey.from_public_bytes(b64url_decode(str(entry.get("x", ""))))
        except ValueError as error:
            raise ValueError(f"keys[{index}].x: not a 32-byte Ed25519 public key: {error}") from error
        if entry.get("kid") != kid_of(key):
            raise ValueError(
                f"keys[{index}].kid: {entry.get('kid')!r} is not the key's thumbprint {kid_of(key)}"
            )
        keys[kid_of(key)] = key
    return keys


def verify_signature(key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


def _private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _write_private(directory: Path, key: Ed25519PrivateKey, *, replace: bool) -> None:
    """Write `active.pem` (0600) atomically: a temporary file, then a link (fails if one exists:
    another process won the race and its key is kept) or a rename (rotation)."""
    directory.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".active-", dir=directory)  # mkstemp: mode 0600
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(_private_pem(key))
            stream.flush()
            os.fsync(stream.fileno())
        if replace:
            os.replace(temporary, directory / ACTIVE_FILE)
        else:
            with contextlib.suppress(FileExistsError):
                os.link(temporary, directory / ACTIVE_FILE)
    finally:
        Path(temporary).unlink(missing_ok=True)


def _read_private(path: Path) -> SigningKey:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("signing key %s is readable by others (mode %o): chmod 600 it", path, mode & 0o777)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key ({type(key).__name__})")
    return SigningKey(key)


def _read_retired(directory: Path) -> tuple[Ed25519PublicKey, ...]:
    keys = []
    for path in sorted((directory / RETIRED_DIR).glob("*.pem")):
        key = serialization.load_pem_public_key(path.read_bytes())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{path}: not an Ed25519 public key ({type(key).__name__})")
        keys.append(key)
    return tuple(keys)


def key_dir(settings: Settings) -> Path:
    """SIGNING_KEY_DIR, or DATA_DIR/keys (beside the embedded Redis's files) when it is empty."""
    return Path(settings.signing_key_dir or Path(settings.data_dir) / "keys")


def load_keyring(directory: Path, *, create: bool = True) -> SigningKeyRing:
    """The key ring in `directory`; with `create`, a new active key when there is none (kept for good)."""
    directory = Path(directory)
    active = directory / ACTIVE_FILE
    if not active.exists():
        if not create:
            raise FileNotFoundError(f"{active}: no signing key")
        _write_private(directory, Ed25519PrivateKey.generate(), replace=False)
        logger.info("generated the signing key %s", active)
    return SigningKeyRing(active=_read_private(active), retired=_read_retired(directory))


def load_signing_keys(settings: Settings) -> SigningKeyRing:
    """The gateway's key ring (`key_dir`), created there once. With an external Redis and no
    SIGNING_KEY_DIR each gateway would sign with a key of its own: said in a warning (the records
    still verify, against the keys of the gateway that signed them)."""
    if settings.redis_url and settings.signing_key_dir is None:
        logger.warning(
            "SIGNING_KEY_DIR is empty with an external Redis: this gateway signs with its own key in "
            "%s; gateways sharing a Redis should share SIGNING_KEY_DIR (one key set for all records)",
            key_dir(settings),
        )
    return load_keyring(key_dir(settings))


def rotate(directory: Path) -> SigningKeyRing:
    """Retire the active key (its public key kept in `retired/`) and make a new one active."""
    directory = Path(directory)
    old = load_keyring(directory, create=False)
    retired = directory / RETIRED_DIR
    retired.mkdir(parents=True, exist_ok=True)
    (retired / f"{old.active.kid}.pem").write_bytes(_public_pem(old.active.public))
    _write_private(directory, Ed25519PrivateKey.generate(), replace=True)
    return load_keyring(directory, create=False)
