"""The log's Merkle tree in memory: pymerkle's RFC 9162 tree over the stored leaf hashes.

Job: `LogTree` keeps the leaf hashes read from Redis (appended, never rebuilt) and answers the tree
head (`root`), inclusion paths and consistency paths in the RFC's own form (checked by
app.transparency.proofs). It is pymerkle's `BaseMerkleTree` (7.0.0) given a storage of leaf hashes:
pymerkle hashes leaves as SHA-256(0x00 || entry) and nodes as SHA-256(0x01 || left || right), splits
at the largest power of 2 below the width, MTH of nothing is SHA-256() - RFC 9162 §2.1 (tested on the
Certificate Transparency vectors) - and caches the roots of full subtrees of 128 leaves and more, so a
head or a proof costs O(log n) cached subtree roots plus at most 127 hashes per uncached one, not a
rebuild. Its leaves are stored here (a list of 32-byte hashes: the entries stay in the records); a
leaf hash is appended by `append_leaf_hashes` (the entry is hashed when the auction is written,
app.ledger.tlog). pymerkle counts leaves from 1; this module's indexes count from 0, as the RFC and
the stored index do. Imports pymerkle and app.transparency.proofs only. See docs/DESIGN.md
§ Verifiable auctions.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pymerkle import BaseMerkleTree

from app.transparency.proofs import HASH_SIZE


def _largest_power_of_2_below(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


class LogTree(BaseMerkleTree):
    """An append-only tree of leaf hashes (RFC 9162 §2.1), thread-safe (pymerkle's lock)."""

    def __init__(self) -> None:
        self.leaves: list[bytes] = []
        super().__init__("sha256")

    # pymerkle's storage interface (indexes from 1, as pymerkle counts) ------------------------------
    def _encode_entry(self, data: Any) -> bytes:
        return bytes(data)

    def _store_leaf(self, data: Any, digest: bytes) -> int:
        self.leaves.append(digest)
        return len(self.leaves)

    def _get_leaf(self, index: int) -> bytes:
        return self.leaves[index - 1]

    def _get_leaves(self, offset: int, width: int) -> list[bytes]:
        return self.leaves[offset : offset + width]

    def _get_size(self) -> int:
        return len(self.leaves)

    # the log's operations (indexes from 0) --------------------------------------------------------
    @property
    def size(self) -> int:
        return len(self.leaves)

    def append_leaf_hashes(self, hashes: Iterable[bytes]) -> int:
        """Append leaf hashes (already SHA-256(0x00 || entry)); returns the new size."""
        with self.lock:
            for digest in hashes:
                if len(digest) != HASH_SIZE:
                    raise ValueError(f"a leaf hash has {HASH_SIZE} bytes, not {len(digest)}")
                self.leaves.append(digest)
            return len(self.leaves)

    def leaf(self, index: int) -> bytes:
        return self.leaves[index]

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first `size` leaves (all by default)."""
        return bytes(self.get_root(size))

    def inclusion_path(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 §2.1.3.1 PATH(index, D[size]): the siblings bottom-up (pymerkle's path without the
        leaf itself, which it puts first)."""
        proof = self.prove_inclusion(index + 1, size)
        return [bytes(digest) for digest in proof.path[1:]]

    def consistency_path(self, first: int, second: int) -> list[bytes]:
        """RFC 9162 §2.1.4.1 PROOF(first, D[second]) = SUBPROOF(first, D[second], true). pymerkle's own
        consistency proof takes another path (see app.transparency.proofs); the subtree roots are its
        cached `_get_root`."""
        if not 0 < first <= second <= self.size:
            raise ValueError(f"no consistency proof from {first} to {second} in a tree of {self.size}")
        with self.lock:
            return self._subproof(first, 0, second, True)

    def _subproof(self, m: int, start: int, end: int, whole: bool) -> list[bytes]:
        n = end - start
        if m == n:
            return [] if whole else [bytes(self._get_root(start, end))]
        k = _largest_power_of_2_below(n)
        if m <= k:
            return [*self._subproof(m, start, start + k, whole), bytes(self._get_root(start + k, end))]
        return [*self._subproof(m - k, start + k, end, False), bytes(self._get_root(start, start + k))]
