"""Signed tree heads: what the log commits to, signed with the service's Ed25519 key.

Job: `sign_head` builds and signs a head {type, tree_size, root_hash, timestamp_ms, kid} (the
signature is Ed25519 over the RFC 8785 canonical JSON of those five fields, `head_payload`), and
`head_signature_problem` checks one against a set of public keys (None when it verifies, else what
is wrong). `HeadSigner` is what signs: any object with `.kid` and `.sign(bytes) -> bytes` (the key
ring's active key, app.attestation.keys). `type` separates a head's signature from the auction
statements the same key signs. Pure: imports cryptography and rfc8785 only (mosaic_client and
app.verification use it). See docs/DESIGN.md § Verifiable auctions.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

HEAD_TYPE = "mosaic.tree_head.v1"
SIGNED_FIELDS = ("type", "tree_size", "root_hash", "timestamp_ms", "kid")

PublicKeys = Mapping[str, Ed25519PublicKey | bytes]  # kid -> the key, or its 32 raw bytes


class HeadSigner(Protocol):
    """The key that signs heads."""

    @property
    def kid(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def from_b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class SignedTreeHead:
    tree_size: int
    root_hash: bytes
    timestamp_ms: int
    kid: str
    signature: bytes

    def as_dict(self) -> dict[str, Any]:
        """The head as served and stored: hashes in lowercase hex, the signature base64url."""
        return {
            "type": HEAD_TYPE,
            "tree_size": self.tree_size,
            "root_hash": self.root_hash.hex(),
            "timestamp_ms": self.timestamp_ms,
            "kid": self.kid,
            "signature": b64url(self.signature),
        }

    def canonical(self) -> bytes:
        return rfc8785.dumps(self.as_dict())

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> SignedTreeHead:
        """Parse a served or stored head; ValueError naming the field that is missing or malformed."""
        try:
            if body.get("type") != HEAD_TYPE:
                raise ValueError(f"type is {body.get('type')!r}, not {HEAD_TYPE!r}")
            size, timestamp, kid = body["tree_size"], body["timestamp_ms"], body["kid"]
            if type(size) is not int or size < 0 or type(timestamp) is not int or not isinstance(kid, str):
                raise ValueError("tree_size and timestamp_ms must be integers >= 0 and kid a string")
            root = bytes.fromhex(body["root_hash"])
            if len(root) != 32:
                raise ValueError("root_hash must be 64 hex digits")
            return cls(size, root, timestamp, kid, from_b64url(body["signature"]))
        except KeyError as error:
            raise ValueError(f"a tree head needs the field {error.args[0]!r}") from error
        except (TypeError, binascii.Error, AttributeError) as error:
            raise ValueError(f"malformed tree head: {error}") from error


def head_payload(tree_size: int, root_hash: bytes, timestamp_ms: int, kid: str) -> bytes:
    """The signed bytes: RFC 8785 canonical JSON of the head without its signature."""
    return rfc8785.dumps(
        {
            "type": HEAD_TYPE,
            "tree_size": tree_size,
            "root_hash": root_hash.hex(),
            "timestamp_ms": timestamp_ms,
            "kid": kid,
        }
    )


def sign_head(tree_size: int, root_hash: bytes, timestamp_ms: int, signer: HeadSigner) -> SignedTreeHead:
    signature = signer.sign(head_payload(tree_size, root_hash, timestamp_ms, signer.kid))
    return SignedTreeHead(tree_size, root_hash, timestamp_ms, signer.kid, signature)


def _public_key(key: Ed25519PublicKey | bytes) -> Ed25519PublicKey:
    return key if isinstance(key, Ed25519PublicKey) else Ed25519PublicKey.from_public_bytes(key)


def head_signature_problem(head: SignedTreeHead, public_keys: PublicKeys) -> str | None:
    """None when the head's signature verifies with the key its `kid` names, else why not."""
    key = public_keys.get(head.kid)
    if key is None:
        return f"no public key with kid {head.kid!r} (known: {sorted(public_keys)})"
    payload = head_payload(head.tree_size, head.root_hash, head.timestamp_ms, head.kid)
    try:
        _public_key(key).verify(head.signature, payload)
    except InvalidSignature:
        return f"the signature of the head of size {head.tree_size} does not verify with key {head.kid!r}"
    except ValueError as error:
        return f"the public key {head.kid!r} is not an Ed25519 key: {error}"
    return None
