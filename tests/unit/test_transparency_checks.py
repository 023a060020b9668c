"""Signed tree heads and `mosaic verify`'s log checks (app.verification.log_checks).

Invariants: a head's signature is Ed25519 over the RFC 8785 canonical JSON of its fields but the
signature, and verifies only with the key its kid names; any changed field (size, root, timestamp,
kid) or an unknown kid fails it; `check_inclusion` passes a true proof and names the failing check
(head signature, leaf hash, inclusion path) when the statement, a path hash or the head changes;
`check_consistency` passes a true proof and fails on a rewritten log or a proof for other sizes.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app.transparency.heads import SignedTreeHead, head_signature_problem, sign_head
from app.transparency.proofs import leaf_hash
from app.transparency.tree import LogTree
from app.verification.log_checks import check_consistency, check_inclusion


class Signer:
    """A HeadSigner over cryptography's Ed25519PrivateKey (the shape of app.attestation's key)."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.key = Ed25519PrivateKey.generate()

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)


SIGNER = Signer("k1")
KEYS = {"k1": SIGNER.key.public_key()}
STATEMENTS = [rfc8785.dumps({"v": 1, "auction_id": f"a{i}", "record_sha256": f"{i:064x}"}) for i in range(13)]


def tree(statements: list[bytes]) -> LogTree:
    t = LogTree()
    t.append_leaf_hashes(leaf_hash(s) for s in statements)
    return t


def head_for(t: LogTree, size: int, timestamp_ms: int = 1_000) -> SignedTreeHead:
    return sign_head(size, t.root(size), timestamp_ms, SIGNER)


def proof_body(t: LogTree, index: int, size: int) -> dict[str, Any]:
    head = head_for(t, size)
    return {
        "auction_id": f"a{index}",
        "leaf_index": index,
        "leaf_hash": t.leaf(index).hex(),
        "tree_size": size,
        "audit_path": [d.hex() for d in t.inclusion_path(index, size)],
        "head": head.as_dict(),
    }


def test_the_signature_is_over_the_canonical_head() -> None:
    head = head_for(tree(STATEMENTS), 13, 1234)
    body = head.as_dict()
    unsigned = {k: v for k, v in body.items() if k != "signature"}
    SIGNER.key.public_key().verify(head.signature, rfc8785.dumps(unsigned))
    assert SignedTreeHead.from_dict(json.loads(head.canonical())) == head
    assert head_signature_problem(head, KEYS) is None
    assert head_signature_problem(head, {"k1": bytes(SIGNER.key.public_key().public_bytes_raw())}) is None
    for change in ({"tree_size": 12}, {"root_hash": bytes(32)}, {"timestamp_ms": 1235}, {"kid": "k2"}):
        changed = dataclasses.replace(head, **change)  # type: ignore[arg-type]
        assert head_signature_problem(changed, {**KEYS, "k2": KEYS["k1"]}) is not None, change
    assert "no public key with kid 'k1'" in (head_signature_problem(head, {}) or "")
    other = Signer("k1")
    assert "does not verify" in (head_signature_problem(head, {"k1": other.key.public_key()}) or "")


@pytest.mark.parametrize("field", ["type", "tree_size", "root_hash", "signature"])
def test_a_malformed_head_names_its_field(field: str) -> None:
    body = head_for(tree(STATEMENTS), 3).as_dict()
    body[field] = "x" if field != "tree_size" else -1
    with pytest.raises(ValueError):
        SignedTreeHead.from_dict(body)
    del body[field]
    with pytest.raises(ValueError, match=field if field != "type" else "type"):
        SignedTreeHead.from_dict(body)


def test_check_inclusion_passes_a_true_proof_for_every_leaf() -> None:
    t = tree(STATEMENTS)
    for size in (1, 2, 5, 8, 13):
        for index in range(size):
            checks = check_inclusion(STATEMENTS[index], proof_body(t, index, size), KEYS)
            assert [c.name for c in checks] == ["log.head_signature", "log.leaf_hash", "log.inclusion"]
            assert all(c.ok for c in checks), checks


def test_check_inclusion_names_what_disagrees() -> None:
    t = tree(STATEMENTS)
    body = proof_body(t, 5, 13)
    failed = {c.name for c in check_inclusion(STATEMENTS[5] + b" ", body, KEYS) if not c.ok}
    assert failed == {"log.leaf_hash", "log.inclusion"}  # a changed statement
    bad_path = {**body, "audit_path": [*body["audit_path"]]}
    bad_path["audit_path"][1] = ("0" if bad_path["audit_path"][1][0] != "0" else "1") + bad_path[
        "audit_path"
    ][1][1:]
    assert [c.name for c in check_inclusion(STATEMENTS[5], bad_path, KEYS) if not c.ok] == ["log.inclusion"]
    forged = {**body, "head": {**body["head"], "root_hash": "00" * 32}}
    failed = {c.name for c in check_inclusion(STATEMENTS[5], forged, KEYS) if not c.ok}
    assert failed == {"log.head_signature", "log.inclusion"}
    broken = {**body, "audit_path": ["zz"]}
    assert "audit_path[0] is not hex" in check_inclusion(STATEMENTS[5], broken, KEYS)[2].detail
    no_head = {k: v for k, v in body.items() if k != "head"}
    assert [c.ok for c in check_inclusion(STATEMENTS[5], no_head, KEYS)] == [False, True, False]


def test_check_consistency_passes_an_append_and_fails_a_rewrite() -> None:
    t = tree(STATEMENTS)
    old, new = head_for(t, 5).as_dict(), head_for(t, 13, 2_000).as_dict()
    proof = {"first": 5, "second": 13, "consistency_path": [d.hex() for d in t.consistency_path(5, 13)]}
    assert all(c.ok for c in check_consistency(old, new, proof, KEYS))
    rewritten = tree([*STATEMENTS[:2], b"rewritten", *STATEMENTS[3:]])
    new_rewritten = head_for(rewritten, 13, 2_000).as_dict()
    proof_rewritten = {**proof, "consistency_path": [d.hex() for d in rewritten.consistency_path(5, 13)]}
    checks = check_consistency(old, new_rewritten, proof_rewritten, KEYS)
    assert [c.name for c in checks if not c.ok] == ["log.consistency"]
    assert "does not extend" in checks[-1].detail
    wrong_sizes = {**proof, "first": 4}
    assert "the proof is for sizes (4, 13)" in check_consistency(old, new, wrong_sizes, KEYS)[-1].detail
