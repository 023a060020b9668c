"""`verify_document`: every offline check of a record or a sealed view, in `mosaic verify`'s order.

Job: given the JSON `GET /auctions/{id}` returned (a full `AuctionRecord`, or an advertiser's
`SealedAuctionRecord`, told apart by `view: "sealed"`) and the public keys (kid → Ed25519 key, from
/.well-known/mosaic-keys or a key file: `app.attestation.keys.public_keys`), a `VerificationReport`:
`attestation` (the document is signed), `signature`, `statement`, the digests
(`app.verification.digests`), then the recomputed mechanism (`app.verification.recompute`). The
inclusion proof (the transparency log) and the re-score need I/O: the caller (`app.cli_verify`,
`mosaic_client`) appends their checks to the same report. Never raises on a malformed document: a
check fails naming what is missing. No I/O. Imports the other `app.verification` modules only; see
docs/DESIGN.md § Verifiable auctions.
"""

from __future__ import annotations

from typing import Any

from app.verification.digests import PublicKeys, record_checks, signature_check, statement_check, view_checks
from app.verification.recompute import record_recompute, view_recompute
from app.verification.report import Check, VerificationReport


def verify_document(document: Any, keys: PublicKeys) -> VerificationReport:
    """The report of a full record or a sealed view (`view: "sealed"`)."""
    if not isinstance(document, dict):
        report = VerificationReport(auction_id="?", view="full")
        report.checks.append(Check("attestation", False, "the document is not a JSON object"))
        return report
    sealed = document.get("view") == "sealed"
    report = VerificationReport(
        auction_id=str(document.get("auction_id", "?")), view="sealed" if sealed else "full"
    )
    attestation = document.get("attestation")
    if not isinstance(attestation, dict) or not isinstance(attestation.get("statement"), dict):
        report.add(
            "attestation",
            False,
            "the record carries no signed statement (stored with ATTESTATION_ENABLED=false?)",
        )
        return report
    report.add("attestation", True, f"statement v{attestation['statement'].get('v')}")
    report.checks.append(signature_check(attestation, keys))
    report.checks.append(statement_check(attestation["statement"], document))
    try:
        if sealed:
            report.checks.extend(view_checks(document, attestation))
            report.checks.extend(view_recompute(attestation))
        else:
            report.checks.extend(
                record_checks(document, attestation["statement"], attestation.get("salts") or {})
            )
            report.checks.extend(record_recompute(document))
    except (AttributeError, KeyError, TypeError, ValueError) as error:  # a malformed document
        report.add("document", False, f"malformed: {type(error).__name__}: {error}")
    return report
