"""`mosaic verify`'s transparency log checks: an auction's inclusion, and two heads' consistency.

Job: `check_inclusion(entry, proof_body, public_keys)` checks the body of `GET /auctions/{id}/proof`
against the auction's log entry (the canonical bytes of its signed statement): the head's signature,
the leaf hash, the inclusion path (RFC 9162 §2.1.3.2). `check_consistency(old_head, new_head,
proof_body, public_keys)` checks that the newer head only appended to the older (RFC 9162 §2.1.4.2;
the body of `GET /transparency/consistency`): what an auditor who kept an old head runs. Each
returns `Check`s (app.verification.report) naming what disagrees. Pure: imports app.transparency
(heads, proofs) and app.verification.report only, no I/O (mosaic_client may use it).
See docs/DESIGN.md § Verifiable auctions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.transparency.heads import PublicKeys, SignedTreeHead, head_signature_problem
from app.transparency.proofs import consistency_ok, inclusion_ok, leaf_hash
from app.verification.report import Check


def _hashes(values: Any, field: str) -> list[bytes]:
    if not isinstance(values, list):
        raise ValueError(f"{field} must be a list of hex hashes")
    hashes = []
    for position, value in enumerate(values):
        try:
            digest = bytes.fromhex(value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{field}[{position}] is not hex: {value!r}") from error
        if len(digest) != 32:
            raise ValueError(f"{field}[{position}] has {len(digest)} bytes, not 32")
        hashes.append(digest)
    return hashes


def _head_check(name: str, body: Any, public_keys: PublicKeys) -> tuple[Check, SignedTreeHead | None]:
    try:
        head = SignedTreeHead.from_dict(body if isinstance(body, Mapping) else {})
    except ValueError as error:
        return Check(name, False, f"the tree head is malformed: {error}"), None
    problem = head_signature_problem(head, public_keys)
    if problem is not None:
        return Check(name, False, problem), head
    return Check(name, True, f"tree head of size {head.tree_size} signed by {head.kid!r}"), head


def check_inclusion(entry: bytes, proof_body: Mapping[str, Any], public_keys: PublicKeys) -> list[Check]:
    """Checks `log.head_signature`, `log.leaf_hash`, `log.inclusion` (in that order; a later one is
    reported failed, naming the earlier failure, when it cannot be run)."""
    head_check, head = _head_check("log.head_signature", proof_body.get("head"), public_keys)
    checks = [head_check]
    expected = leaf_hash(entry)
    served = proof_body.get("leaf_hash")
    same = served == expected.hex()
    checks.append(
        Check(
            "log.leaf_hash",
            same,
            f"leaf hash {expected.hex()} (SHA-256(0x00 || statement))"
            + ("" if same else f"; the log serves {served!r} for this auction"),
        )
    )
    if head is None:
        checks.append(Check("log.inclusion", False, "not checked: the tree head is malformed"))
        return checks
    index = proof_body.get("leaf_index")
    try:
        path = _hashes(proof_body.get("audit_path"), "audit_path")
    except ValueError as error:
        checks.append(Check("log.inclusion", False, str(error)))
        return checks
    ok = type(index) is int and inclusion_ok(index, head.tree_size, expected, path, head.root_hash)
    detail = f"leaf {index} of {head.tree_size}, root {head.root_hash.hex()}"
    if not ok:
        detail = f"the audit path does not lead from this statement's leaf to the head's root ({detail})"
    checks.append(Check("log.inclusion", ok, detail))
    return checks


def check_consistency(
    old_head: Mapping[str, Any],
    new_head: Mapping[str, Any],
    proof_body: Mapping[str, Any],
    public_keys: PublicKeys,
) -> list[Check]:
    """Checks `log.old_head_signature`, `log.new_head_signature`, `log.consistency`: the new head's tree
    extends the old one (an append-only log), with the proof for (old size, new size)."""
    old_check, old = _head_check("log.old_head_signature", old_head, public_keys)
    new_check, new = _head_check("log.new_head_signature", new_head, public_keys)
    checks = [old_check, new_check]
    if old is None or new is None:
        checks.append(Check("log.consistency", False, "not checked: a tree head is malformed"))
        return checks
    sizes = (proof_body.get("first"), proof_body.get("second"))
    if sizes != (old.tree_size, new.tree_size):
        expected = (old.tree_size, new.tree_size)
        checks.append(Check("log.consistency", False, f"the proof is for sizes {sizes}, not {expected}"))
        return checks
    try:
        path = _hashes(proof_body.get("consistency_path"), "consistency_path")
    except ValueError as error:
        checks.append(Check("log.consistency", False, str(error)))
        return checks
    ok = consistency_ok(old.tree_size, new.tree_size, old.root_hash, new.root_hash, path)
    detail = f"the tree of {new.tree_size} leaves extends the tree of {old.tree_size}"
    if not ok:
        detail = (
            f"the tree of {new.tree_size} leaves (root {new.root_hash.hex()}) does not extend the tree of "
            f"{old.tree_size} (root {old.root_hash.hex()}): the log was rewritten, or the proof is wrong"
        )
    checks.append(Check("log.consistency", ok, detail))
    return checks
