"""Sealed views: a full audit record → what one advertiser may see of it, and what her what-if may ask.

Job: `seal_record(record, advertiser_id)` (pure: a stored record as `GET /auctions/{id}` reads it → her
`SealedAuctionRecord`), `check_sealed_whatif(request, advertiser_id)` (a what-if body that names
another advertiser → `SealedFieldError`, answered 403 naming the field) and `sealed_whatif(...)` (her
what-if, computed from her sealed view alone by `app.contract.sealed.resolve_own`). The gateway calls
them by the key's scope (an advertiser key; platform keys and auth off keep the full record). The
invariant, property-tested: a sealed view holds no other advertiser's id, name, description,
instruction, value scale, payment or reward vector (with one other advertiser, the sum of the others'
rewards is hers: inherent, docs/DESIGN.md § Sealed views), its disclosure names her alone and counts
the other sponsors (`app.contract.disclosure.seal_disclosure`), and her payment recomputed from it
equals the stored one. Her view carries her share of the record's attestation (the signed statement,
her salt, the shared part and her part), so that she can verify it (`app.verification`). No I/O.
Imports the API's models (`app.contract`) and `app.attestation` (the shared fields, the commitments)
only; see docs/DESIGN.md § Layout.
"""

from __future__ import annotations

from typing import Any

from app.attestation.commitments import (
    SHARED_CANDIDATE_FIELDS,
    SHARED_RECORD_FIELDS,
    SHARED_REQUEST_FIELDS,
    others_sum,
)
from app.attestation.statement import sealed_attestation
from app.contract.attestation import SealedAttestation
from app.contract.disclosure import record_disclosure, seal_disclosure
from app.contract.result import AdvertiserResult
from app.contract.sealed import (
    SealedAuctionRecord,
    SealedCandidate,
    SealedRequest,
    SealedWhatIfResponse,
    resolve_own,
)
from app.contract.whatif import WhatIfRequest

# The whitelists: what of the full record an advertiser may read as it is stored (the shared part its
# attestation commits to, and the charge's state). Everything else of hers is added by name (her entry,
# her figures, her reward); of the others, only the summed rewards.
_RECORD_FIELDS = (*SHARED_RECORD_FIELDS, "billing")
_CANDIDATE_FIELDS = SHARED_CANDIDATE_FIELDS
# The request's settings (every field but the advertisers and the response-shaping flags).
_REQUEST_FIELDS = SHARED_REQUEST_FIELDS


class SealedFieldError(PermissionError):
    """An advertiser key's what-if names another advertiser: 403 naming the field.

    403, not 422: the body is valid (a platform key may send it); this key may not. Not 409 ("did not
    take part"): the same answer whether the other id took part or not, so it is no oracle of who else
    was in the auction."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


def _row(rows: list[dict[str, Any]], advertiser_id: str, auction_id: object) -> dict[str, Any]:
    """Her row of `rows` (the request's advertisers, or the outcome's); ValueError when she has none."""
    for row in rows:
        if row.get("id") == advertiser_id:
            return dict(row)
    raise ValueError(f"advertiser {advertiser_id!r} did not take part in auction {auction_id!r}")


def _candidate(row: dict[str, Any], advertiser_id: str) -> SealedCandidate:
    rewards: dict[str, float] = row["rewards"]
    return SealedCandidate(
        **{name: row.get(name) for name in _CANDIDATE_FIELDS},
        reward=rewards[advertiser_id],
        # exactly rounded (fsum): the aggregate does not depend on the others' order
        others_reward=others_sum(rewards, advertiser_id),
        log_context=_own_entry(row.get("log_context"), advertiser_id),
    )


def _own_entry(by_advertiser: dict[str, float] | None, advertiser_id: str) -> dict[str, float] | None:
    """Her own entry of a per-advertiser map (issue 35: log_context), never the others'."""
    if by_advertiser is None or advertiser_id not in by_advertiser:
        return None
    return {advertiser_id: by_advertiser[advertiser_id]}


def seal_record(record: dict[str, Any], advertiser_id: str) -> SealedAuctionRecord:
    """Her sealed view of a stored record (`AuctionRecord` as JSON); ValueError when she was not in it."""
    auction_id = record["auction_id"]
    stored_request = record.get("request", {})
    entry = _row(stored_request.get("advertisers", []), advertiser_id, auction_id)
    return SealedAuctionRecord(
        **{name: record.get(name) for name in _RECORD_FIELDS},
        disclosure=seal_disclosure(record_disclosure(record), advertiser_id),
        advertiser=AdvertiserResult.model_validate(_row(record["advertisers"], advertiser_id, auction_id)),
        payment_micro=int(record.get("payments_micro", {}).get(advertiser_id, 0)),
        candidates=[_candidate(row, advertiser_id) for row in record.get("candidates") or []],
        request=SealedRequest.model_validate(
            {**{name: stored_request.get(name) for name in _REQUEST_FIELDS}, "advertiser": entry}
        ),
        engine=record.get("engine"),  # names no advertiser (issue 35)
        attestation=_attestation(record, advertiser_id),
    )


def _attestation(record: dict[str, Any], advertiser_id: str) -> SealedAttestation | None:
    """Her share of the record's attestation (the statement, the signature, her salt, the shared part,
    her part: `app.attestation.statement.sealed_attestation`); None when the record is unsigned."""
    attestation = sealed_attestation(record, advertiser_id)
    return None if attestation is None else SealedAttestation.model_validate(attestation)


def check_sealed_whatif(request: WhatIfRequest, advertiser_id: str) -> None:
    """Refuse (SealedFieldError) a what-if that names any advertiser but `advertiser_id`."""
    scope = f"this key is scoped to advertiser {advertiser_id!r}"
    for index, other in enumerate(request.advertisers or []):
        if other != advertiser_id:
            raise SealedFieldError(
                ("advertisers", index),
                f"advertisers[{index}]: {scope}: its what-if may name only that advertiser "
                f"(absent: everyone as the auction ran; [{advertiser_id!r}]: the others dropped)",
            )
    for other in request.value_scales or {}:
        if other != advertiser_id:
            raise SealedFieldError(
                ("value_scales", other),
                f"value_scales[{other!r}]: {scope}: its what-if may change only its own value scale",
            )


def sealed_whatif(record: dict[str, Any], request: WhatIfRequest, advertiser_id: str) -> SealedWhatIfResponse:
    """Her what-if: checked (`check_sealed_whatif`), then resolved from her sealed view alone."""
    check_sealed_whatif(request, advertiser_id)
    view = seal_record(record, advertiser_id)
    return resolve_own(
        view,
        tau=request.tau,
        value_scale=(request.value_scales or {}).get(advertiser_id),
        alone=request.advertisers is not None,
    )
