"""The signature and the commitments of a record or a sealed view, checked against its statement.

Job: pure checks (`Check`s, app.verification.report) that
- `signature`: the statement is signed by a key of the given set (by its `kid`), over its RFC 8785
  bytes;
- `statement`: the statement names this auction (its id and creation time);
- full record (`record_checks`): `record` — the whole record's digest; `shared` — the shared part's;
  `candidates` — each candidate's shared row (names the candidates that disagree, or a candidate
  dropped or added); `parts` — each advertiser's salted part (names whose part disagrees);
- sealed view (`view_checks`): `shared`, `candidates`, `part` (her salted part is one of the signed
  digests), `view` (what the view shows equals what is committed: names the field).
A failed check says what disagrees: the field, the candidate or the advertiser, and both values
where they can be shown. No I/O. Imports `cryptography` (the key type), `app.attestation` and the
report's types only; see docs/DESIGN.md § Verifiable auctions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from app.attestation.canonical import sha256_hex
from app.attestation.commitments import (
    SHARED_OPTIONAL_FIELDS,
    advertiser_ids,
    advertiser_part,
    salted_digest,
    shared_candidate,
    shared_digest,
    shared_part,
    signed_record,
)
from app.attestation.keys import b64url_decode, verify_signature
from app.attestation.statement import statement_bytes
from app.verification.report import Check

PublicKeys = Mapping[str, Ed25519PublicKey]


def signature_check(attestation: Mapping[str, Any], keys: PublicKeys) -> Check:
    """The statement's Ed25519 signature by the key its `kid` names."""
    statement = attestation.get("statement") or {}
    kid = statement.get("kid")
    key = keys.get(str(kid))
    if key is None:
        known = ", ".join(sorted(keys)) or "none"
        return Check(
            "signature", False, f"the statement's key {kid!r} is not in the key set (known: {known})"
        )
    try:
        signature = b64url_decode(str(attestation.get("signature", "")))
    except ValueError as error:
        return Check("signature", False, f"the signature is not base64url: {error}")
    if not verify_signature(key, signature, statement_bytes(statement)):
        return Check("signature", False, f"the Ed25519 signature does not match the statement (key {kid})")
    return Check("signature", True, f"Ed25519 by key {kid}")


def statement_check(statement: Mapping[str, Any], shown: Mapping[str, Any]) -> Check:
    """The statement is about this auction: the same id and creation time as the record or view."""
    for name in ("auction_id", "created_at_ms"):
        if statement.get(name) != shown.get(name):
            return Check(
                "statement",
                False,
                f"{name}: the statement says {statement.get(name)!r}, the record {shown.get(name)!r}",
            )
    return Check("statement", True, f"auction {shown.get('auction_id')}, v{statement.get('v')}")


def _candidate_check(rows: list[dict[str, Any]], signed: list[str]) -> Check:
    """Each candidate's shared row against its signed digest (names them), and their count."""
    if len(rows) != len(signed):
        what = "dropped" if len(rows) < len(signed) else "added"
        return Check(
            "candidates",
            False,
            f"{len(rows)} candidates, the statement signs {len(signed)}: a candidate was {what}",
        )
    wrong = [j for j, row in enumerate(rows) if sha256_hex(shared_candidate(row)) != signed[j]]
    if wrong:
        named = ", ".join(f"candidates[{j}]" for j in wrong)
        return Check(
            "candidates",
            False,
            f"{named} disagree with the signed digests (text, log_ref, log_proposal, probability, ...)",
        )
    return Check("candidates", True, f"{len(rows)} candidates' digests")


def _shared_check(shared: dict[str, Any], statement: Mapping[str, Any]) -> Check:
    candidates = [sha256_hex(row) for row in shared.get("candidates") or []]
    if shared_digest(shared, candidates) == statement.get("shared_sha256"):
        return Check("shared", True, "the shared part's digest")
    where = (
        "its candidates"
        if candidates != list(statement.get("candidates_sha256") or [])
        else (
            "a shared field (auction_id, reply, chosen_index, tau, proposal, seed, currency, test, "
            "created_at_ms, effective_sample_size, the request's settings"
            + "".join(f", {n}" for n in SHARED_OPTIONAL_FIELDS)
            + ")"
        )
    )
    return Check("shared", False, f"the shared part disagrees with its signed digest: {where}")


def record_checks(
    record: dict[str, Any], statement: Mapping[str, Any], salts: Mapping[str, str]
) -> list[Check]:
    """A full record against its statement: the whole, the shared part, each candidate, each part."""
    checks = []
    whole = sha256_hex(signed_record(record)) == statement.get("record_sha256")
    checks.append(
        Check(
            "record",
            whole,
            "the record's digest" if whole else "the record disagrees with its signed digest (see below)",
        )
    )
    checks.append(_shared_check(shared_part(record), statement))
    checks.append(
        _candidate_check(list(record.get("candidates") or []), list(statement.get("candidates_sha256") or []))
    )
    checks.append(_parts_check(record, statement, salts))
    if not whole and all(check.ok for check in checks[1:]):
        checks[0] = Check(
            "record",
            False,
            "the record disagrees with its signed digest outside the shared and per-advertiser "
            "parts (revenue, timings_ms, excluded, selection, the request's other fields, a per-advertiser "
            "field of someone with no part)",
        )
    return checks


def _parts_check(record: dict[str, Any], statement: Mapping[str, Any], salts: Mapping[str, str]) -> Check:
    signed = set(statement.get("parts_sha256") or [])
    ids = advertiser_ids(record)
    wrong = [
        aid
        for aid in ids
        if aid not in salts or salted_digest(salts[aid], advertiser_part(record, aid)) not in signed
    ]
    if wrong:
        named = ", ".join(repr(aid) for aid in wrong)
        return Check(
            "parts",
            False,
            f"the part of advertiser {named} disagrees with the signed digests "
            "(her entry, payment, rewards, ...)",
        )
    if len(ids) != len(signed):
        return Check(
            "parts",
            False,
            f"{len(ids)} advertisers, the statement signs {len(signed)} parts: "
            "an advertiser was dropped or added",
        )
    return Check("parts", True, f"{len(ids)} advertisers' salted parts")


def _differences(shown: Mapping[str, Any], committed: Mapping[str, Any], names: Any, path: str) -> list[str]:
    return [
        f"{path}{name}: shown {shown.get(name)!r}, committed {committed.get(name)!r}"
        for name in names
        if shown.get(name) != committed.get(name)
    ]


def _view_differences(view: dict[str, Any], shared: dict[str, Any], part: dict[str, Any]) -> list[str]:
    """Where the sealed view shows something else than its committed shared part and her part."""
    found = _differences(
        view, shared, [n for n in shared if n not in ("candidates", "request") and n in view], ""
    )
    request = view.get("request") or {}
    found += _differences(request, shared.get("request") or {}, list(shared.get("request") or {}), "request.")
    found += _differences(
        request.get("advertiser") or {},
        part.get("entry") or {},
        list(part.get("entry") or {}),
        "request.advertiser.",
    )
    found += _differences(
        view.get("advertiser") or {}, part.get("result") or {}, list(part.get("result") or {}), "advertiser."
    )
    found += _differences(view, part, ["payment_micro"], "")
    found += _disclosure_differences(view.get("disclosure"), part)
    rows, committed = view.get("candidates") or [], shared.get("candidates") or []
    own = [part.get(name) or [] for name in ("reward", "others_reward")]
    if not len(rows) == len(committed) == len(own[0]) == len(own[1]):
        return [
            *found,
            f"candidates: the view shows {len(rows)}, the shared part commits {len(committed)}, "
            f"her part {len(own[0])}",
        ]
    for j, row in enumerate(rows):
        found += _differences(row, committed[j], list(committed[j]), f"candidates[{j}].")
        mine: dict[str, Any] = {"reward": own[0][j], "others_reward": own[1][j]}
        shown = {name: row.get(name) for name in mine}
        if "log_context" in row and isinstance(part.get("log_context"), list):  # her own score only
            mine["log_context"] = part["log_context"][j]
            shown["log_context"] = _own_value(row.get("log_context"))
        found += _differences(shown, mine, list(mine), f"candidates[{j}].")
    return found


def _disclosure_differences(disclosure: Any, part: Mapping[str, Any]) -> list[str]:
    """What of her view's disclosure she can check: she is named iff her committed charge is ≥ 1
    micro-unit (the rule), and then the reply says it is sponsored; nobody else is named to her. (The
    count of other sponsors is not committed to her: the full record's digest covers the disclosure.)"""
    if not isinstance(disclosure, Mapping):
        return []
    mine, charged = part.get("advertiser_id"), int(part.get("payment_micro") or 0)
    named = [s.get("id") for s in disclosure.get("sponsors") or [] if isinstance(s, Mapping)]
    if named.count(mine) != (1 if charged >= 1 else 0) or any(name != mine for name in named):
        return [f"disclosure: names {named!r}, her committed charge is {charged} micro (named iff ≥ 1)"]
    if charged >= 1 and disclosure.get("sponsored") is not True:
        return [f"disclosure.sponsored: {disclosure.get('sponsored')!r}, but she was charged {charged} micro"]
    return []


def _own_value(log_context: Any) -> Any:
    """The one entry of her view's `log_context` ({her id: log π_i(y_j)}), as her part commits it."""
    if isinstance(log_context, Mapping) and len(log_context) == 1:
        return next(iter(log_context.values()))
    return log_context


def view_checks(view: dict[str, Any], attestation: Mapping[str, Any]) -> list[Check]:
    """Her sealed view against the statement: the shared part, each candidate, her part, what it shows."""
    statement = attestation.get("statement") or {}
    shared, part = dict(attestation.get("shared") or {}), dict(attestation.get("part") or {})
    checks = [
        _shared_check(shared, statement),
        _candidate_check(
            list(shared.get("candidates") or []), list(statement.get("candidates_sha256") or [])
        ),
    ]
    mine = (view.get("advertiser") or {}).get("id")
    if part.get("advertiser_id") != mine:
        checks.append(
            Check(
                "part", False, f"the committed part is {part.get('advertiser_id')!r}'s, the view {mine!r}'s"
            )
        )
    elif salted_digest(str(attestation.get("salt", "")), part) not in set(
        statement.get("parts_sha256") or []
    ):
        checks.append(
            Check(
                "part",
                False,
                f"the part of {mine!r} (her entry, payment, rewards, the others' sum) disagrees "
                "with every signed digest",
            )
        )
    else:
        checks.append(
            Check(
                "part",
                True,
                f"{mine!r}'s salted part is one of the {len(statement.get('parts_sha256') or [])} signed",
            )
        )
    differences = _view_differences(view, shared, part)
    detail = "; ".join(differences[:5]) + (
        f"; and {len(differences) - 5} more" if len(differences) > 5 else ""
    )
    checks.append(Check("view", not differences, detail or "what the view shows is what is committed"))
    return checks
