"""What a signed statement commits to: the record, its shared part, and each advertiser's salted part.

Job: split a stored audit record (the JSON `GET /auctions/{id}` returns to the platform) into
- the signed record: every field but `attestation` and `billing` (`UNSIGNED_FIELDS`: the charge's
  state moves pending → billed | expired after the record is written, docs/DESIGN.md § Billing);
- the shared part (`shared_part`): what every participant may read — the fields of a sealed view that
  are the same for everyone (the query and settings, τ, M, the seed, the reply, each candidate's text,
  log π_ref, log q and π_j, and `engine` / `disclosure` / `no_fill` when the record has them). Each
  candidate's shared row is also digested alone (`candidates_sha256`), so a verifier names WHICH
  candidate disagrees;
- one part per advertiser (`advertiser_part`): every per-advertiser field keyed by her id — her
  request entry, her outcome row, her billed micro-units, her budget fit, and by candidate (lists in
  the candidates' order) her reward, the others' rewards summed (exactly rounded: the aggregate her
  sealed view shows) and her `log_context` when the record has it. A part is committed as SHA-256 of
  the canonical `[salt, part]` with a random 128-bit salt per advertiser (SD-JWT's salted
  disclosures): the digests of the others' parts, sorted, tell her nothing of them (their count is
  the number of advertisers, which the default τ = n/2 shows already).
Pure: the standard library and `app.attestation.canonical` only; records are plain JSON dicts. See
docs/DESIGN.md § Verifiable auctions.
"""

from __future__ import annotations

import base64
import hashlib
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.attestation.canonical import (
    Canonicaliser,
    FastPathError,
    canonical_bytes,
    ordered,
    sha256_hex,
)

# Fields of the stored record left out of what is signed (the charge's state changes after signing).
UNSIGNED_FIELDS = ("attestation", "billing")
# What every participant reads alike (the sealed view's shared fields; `billing` is unsigned).
SHARED_RECORD_FIELDS = (
    *("auction_id", "reply", "chosen_index", "tau", "proposal", "seed", "currency"),
    *("test", "created_at_ms", "effective_sample_size"),
)
# Shared only when the record has them: left out when absent. Not the disclosure: it names every
# sponsor, and a sealed view shows hers alone (§ Disclosure); the full record's digest covers it.
SHARED_OPTIONAL_FIELDS = ("engine", "no_fill")
SHARED_CANDIDATE_FIELDS = (
    *("text", "log_ref", "log_proposal", "probability"),
    *("proposal", "num_tokens", "finish_reason", "token_ids"),
)
# The request's settings (every field but the advertisers and the response-shaping flags).
SHARED_REQUEST_FIELDS = (
    *("query", "tau", "candidates", "proposal", "max_tokens"),
    *("temperature", "top_p", "seed", "test"),
)
# Candidate fields that hold one value per advertiser id: her entry goes to her part, never shared.
PER_ADVERTISER_CANDIDATE_FIELDS = ("rewards", "log_context")

SALT_BYTES = 16  # 128 bits


def new_salt() -> str:
    """A fresh random salt: 128 bits, base64url without padding."""
    return base64.urlsafe_b64encode(secrets.token_bytes(SALT_BYTES)).rstrip(b"=").decode()


def signed_record(record: dict[str, Any]) -> dict[str, Any]:
    """The record as signed: every field but `UNSIGNED_FIELDS`."""
    return {key: value for key, value in record.items() if key not in UNSIGNED_FIELDS}


def shared_candidate(row: dict[str, Any]) -> dict[str, Any]:
    return {name: row.get(name) for name in SHARED_CANDIDATE_FIELDS}


def shared_part(record: dict[str, Any]) -> dict[str, Any]:
    """What every participant reads alike (see the module's docstring)."""
    request = record.get("request") or {}
    shared = {name: record.get(name) for name in SHARED_RECORD_FIELDS}
    shared.update({name: record[name] for name in SHARED_OPTIONAL_FIELDS if record.get(name) is not None})
    shared["candidates"] = [shared_candidate(row) for row in record.get("candidates") or []]
    shared["request"] = {name: request.get(name) for name in SHARED_REQUEST_FIELDS}
    return shared


def shared_digest(shared: dict[str, Any], candidates_sha256: list[str] | None = None) -> str:
    """The shared part's digest: SHA-256 of it with each candidate row replaced by its own digest (so
    the candidates' texts are hashed once; `candidates_sha256` when already computed)."""
    if candidates_sha256 is None:
        candidates_sha256 = [sha256_hex(row) for row in shared.get("candidates") or []]
    return sha256_hex({**shared, "candidates": candidates_sha256})


def others_sum(values: dict[str, float], advertiser_id: str) -> float:
    """Σ_{k≠i} of a per-advertiser map, exactly rounded (fsum): independent of the others' order."""
    return math.fsum(float(value) for key, value in values.items() if key != advertiser_id)


def others_rewards(record: dict[str, Any], advertiser_id: str) -> list[float]:
    """Per candidate, the others' rewards summed (Σ_{k≠i}, exactly rounded): her aggregate."""
    return [others_sum(row.get("rewards") or {}, advertiser_id) for row in record.get("candidates") or []]


def _per_candidate(rows: list[dict[str, Any]], advertiser_id: str, others: list[Any]) -> dict[str, list[Any]]:
    """Her per-candidate values, one list per field (in the candidates' order): `reward`,
    `others_reward` and `log_context` when the record has it."""
    own: dict[str, list[Any]] = {
        "reward": [(row.get("rewards") or {}).get(advertiser_id) for row in rows],
        "others_reward": others,
    }
    for name in PER_ADVERTISER_CANDIDATE_FIELDS[1:]:
        if any(isinstance(row.get(name), dict) for row in rows):
            own[name] = [(row.get(name) or {}).get(advertiser_id) for row in rows]
    return own


def _her(rows: list[dict[str, Any]] | None, key: str, advertiser_id: str) -> dict[str, Any] | None:
    return next((row for row in rows or [] if row.get(key) == advertiser_id), None)


def advertiser_part(
    record: dict[str, Any], advertiser_id: str, others: list[Any] | None = None
) -> dict[str, Any]:
    """Advertiser `advertiser_id`'s part: every per-advertiser field of the record keyed by her id
    (`others`: her `others_rewards`, when already computed)."""
    others = others_rewards(record, advertiser_id) if others is None else others
    return {
        "advertiser_id": advertiser_id,
        "entry": _her((record.get("request") or {}).get("advertisers"), "id", advertiser_id),
        "result": _her(record.get("advertisers"), "id", advertiser_id),
        "payment_micro": int((record.get("payments_micro") or {}).get(advertiser_id, 0)),
        "budget": _her(record.get("budgets"), "advertiser_id", advertiser_id),
        **_per_candidate(list(record.get("candidates") or []), advertiser_id, others),
    }


def advertiser_ids(record: dict[str, Any]) -> list[str]:
    """The ids of the advertisers who bid (the outcome's rows), in the record's order."""
    return [str(row.get("id")) for row in record.get("advertisers") or []]


def salted_digest(salt: str, part: dict[str, Any]) -> str:
    """SHA-256 of the canonical `[salt, part]`, hex: her part's commitment."""
    return hashlib.sha256(canonical_bytes([salt, part])).hexdigest()


@dataclass(frozen=True)
class Commitments:
    """The digests a statement signs (see `app.attestation.statement`)."""

    record_sha256: str
    shared_sha256: str
    candidates_sha256: list[str]
    parts_sha256: list[str]  # sorted: their order says nothing of whose is whose


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def commit(record: dict[str, Any], salts: dict[str, str]) -> Commitments:
    """The record's digests; `salts` has one salt per advertiser who bid (KeyError naming one missing).

    The same digests as `commit_slowly` (the definitions), faster: the record is prepared for the
    canonical encoder once (`Canonicaliser`: one walk) and its shared part, candidates and parts are
    cut from that copy (only the others' sums, computed from the record, are prepared anew), each dict
    built here `ordered` as the encoder needs; a record the fast path cannot write goes to
    `commit_slowly` (rfc8785 throughout)."""
    canon = Canonicaliser()
    try:
        prepared = canon.prepare(signed_record(record))
        shared = shared_part(prepared)
        candidates = [_sha256(canon.encode(ordered(row))) for row in shared["candidates"]]
        shared |= {"candidates": candidates, "request": ordered(shared["request"])}
        parts = [
            [salts[aid], ordered(advertiser_part(prepared, aid, canon.prepare(others_rewards(record, aid))))]
            for aid in advertiser_ids(record)
        ]
        return Commitments(
            record_sha256=_sha256(canon.encode(prepared)),
            shared_sha256=_sha256(canon.encode(ordered(shared))),
            candidates_sha256=candidates,
            parts_sha256=sorted(_sha256(canon.encode(part)) for part in parts),
        )
    except FastPathError:
        return commit_slowly(record, salts)


def commit_slowly(
    record: dict[str, Any], salts: dict[str, str], encode: Callable[[Any], bytes] = canonical_bytes
) -> Commitments:
    """The digests by their definitions, each piece through `encode` on its own (`canonical_bytes`;
    the tests and bench/attestation.py pass `rfc8785.dumps`, the reference). The whole record first:
    a value with no canonical form is refused with its path in the record."""

    def digest(value: Any) -> str:
        return _sha256(encode(value))

    whole = digest(signed_record(record))
    shared = shared_part(record)
    candidates = [digest(row) for row in shared["candidates"]]
    return Commitments(
        record_sha256=whole,
        shared_sha256=digest({**shared, "candidates": candidates}),
        candidates_sha256=candidates,
        parts_sha256=sorted(
            digest([salts[aid], advertiser_part(record, aid)]) for aid in advertiser_ids(record)
        ),
    )
