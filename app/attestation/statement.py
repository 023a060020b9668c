"""The signed statement of one auction, and a record's `attestation`.

Job: `attest(record, signer)` → the `attestation` a stored record carries (`attest_entry`: with the
statement's canonical bytes, the record's log entry):
``{"statement": {...}, "signature": base64url Ed25519 over canonical_bytes(statement), "salts":
{advertiser id: salt}}``, where the statement is

    {"v": 1, "kid", "auction_id", "created_at_ms",
     "record_sha256", "shared_sha256", "candidates_sha256": [one per candidate, in order],
     "parts_sha256": [one salted digest per advertiser, sorted]}

(`app.attestation.commitments` says what each digest covers). `sealed_attestation(record,
advertiser_id)` is what her sealed view carries instead: the statement, the signature, HER salt, the
shared part and her part — enough to check both against the signed digests, and nothing of the
others. The statement's canonical bytes are also the transparency log's entry for the auction
(`statement_bytes`). Pure: imports `app.attestation` only; see docs/DESIGN.md § Verifiable auctions.
"""

from __future__ import annotations

from typing import Any

from app.attestation.canonical import canonical_bytes
from app.attestation.commitments import (
    advertiser_ids,
    advertiser_part,
    commit,
    new_salt,
    shared_part,
)
from app.attestation.keys import Signer, b64url

STATEMENT_VERSION = 1


def statement_bytes(statement: dict[str, Any]) -> bytes:
    """What is signed, and what the transparency log appends: the statement's canonical bytes."""
    return canonical_bytes(statement)


def attest(record: dict[str, Any], signer: Signer, salts: dict[str, str] | None = None) -> dict[str, Any]:
    """The attestation of `record` (its JSON, without `attestation`): fresh salts unless given."""
    return attest_entry(record, signer, salts)[0]


def attest_entry(
    record: dict[str, Any], signer: Signer, salts: dict[str, str] | None = None
) -> tuple[dict[str, Any], bytes]:
    """`attest`, and the statement's canonical bytes it signed: the record's transparency-log entry
    (`statement_bytes` of its statement, not encoded twice)."""
    salts = salts if salts is not None else {aid: new_salt() for aid in advertiser_ids(record)}
    digests = commit(record, salts)
    statement = {
        "v": STATEMENT_VERSION,
        "kid": signer.kid,
        "auction_id": record.get("auction_id"),
        "created_at_ms": record.get("created_at_ms"),
        "record_sha256": digests.record_sha256,
        "shared_sha256": digests.shared_sha256,
        "candidates_sha256": digests.candidates_sha256,
        "parts_sha256": digests.parts_sha256,
    }
    entry = statement_bytes(statement)
    attestation = {"statement": statement, "signature": b64url(signer.sign(entry)), "salts": salts}
    return attestation, entry


def sealed_attestation(record: dict[str, Any], advertiser_id: str) -> dict[str, Any] | None:
    """What her sealed view carries of the record's attestation (None: the record is not signed)."""
    attestation = record.get("attestation")
    if not isinstance(attestation, dict):
        return None
    return {
        "statement": attestation["statement"],
        "signature": attestation["signature"],
        "salt": attestation["salts"][advertiser_id],
        "shared": shared_part(record),
        "part": advertiser_part(record, advertiser_id),
    }
