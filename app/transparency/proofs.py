"""RFC 9162 §2.1 Merkle tree hashing and the verification of inclusion and consistency proofs.

Job: the client's half of the transparency log: `leaf_hash` (SHA-256(0x00 || entry)), `node_hash`
(SHA-256(0x01 || left || right)), `root_from_inclusion` / `inclusion_ok` (§2.1.3.2) and
`consistency_ok` (§2.1.4.2), step for step as the RFC writes them, on the RFC's proofs (the audit path
without the leaf, the consistency path without the first root). Written here rather than taken from
pymerkle because pymerkle's proofs carry their own layout (the leaf and a rule bit per step; its
consistency path is not the RFC's SUBPROOF), and a client of this log must be able to check it with
any RFC 9162 verifier: the tree and its proofs are app.transparency.tree (pymerkle), checked against
this module, an independent recursive tree and the Certificate Transparency reference vectors in
tests/unit/test_transparency_proofs.py. Pure: the standard library only (mosaic_client imports it).
See docs/DESIGN.md § Verifiable auctions.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()  # MTH({}) = HASH()


def leaf_hash(entry: bytes) -> bytes:
    """MTH({d0}) = HASH(0x00 || d0)."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """An interior node: HASH(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _well_formed(hashes: Sequence[bytes]) -> bool:
    return all(isinstance(h, bytes) and len(h) == HASH_SIZE for h in hashes)


def root_from_inclusion(leaf_index: int, tree_size: int, leaf: bytes, path: Sequence[bytes]) -> bytes | None:
    """The root an inclusion proof leads to (RFC 9162 §2.1.3.2 steps 1-4), or None when the proof
    cannot be one for (leaf_index, tree_size) (index out of range, path too long or too short)."""
    if not 0 <= leaf_index < tree_size or not _well_formed([leaf, *path]):
        return None
    fn, sn, r = leaf_index, tree_size - 1, leaf
    for p in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return r if sn == 0 else None


def inclusion_ok(leaf_index: int, tree_size: int, leaf: bytes, path: Sequence[bytes], root: bytes) -> bool:
    """Whether `path` proves the leaf hash `leaf` at `leaf_index` in the tree of `tree_size` with `root`."""
    computed = root_from_inclusion(leaf_index, tree_size, leaf, path)
    return computed is not None and hmac.compare_digest(computed, root)


def consistency_ok(
    first: int, second: int, first_root: bytes, second_root: bytes, path: Sequence[bytes]
) -> bool:
    """Whether `path` proves the tree of size `second` and root `second_root` extends (appends only)
    the tree of size `first` and root `first_root` (RFC 9162 §2.1.4.2). Equal sizes need an empty
    path and equal roots; an empty first tree is consistent with any (empty path)."""
    if not 0 <= first <= second or not _well_formed([first_root, second_root, *path]):
        return False
    if first == second:
        return not path and hmac.compare_digest(first_root, second_root)
    if first == 0:
        return not path
    if not path:
        return False
    proof = list(path)
    if first & (first - 1) == 0:  # an exact power of 2: the first root is the proof's first node
        proof.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and hmac.compare_digest(fr, first_root) and hmac.compare_digest(sr, second_root)
