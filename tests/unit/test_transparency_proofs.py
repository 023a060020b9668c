"""The transparency log's tree and proofs are RFC 9162 §2.1's, byte for byte.

Invariants: pymerkle's tree (app.transparency.tree) gives the Certificate Transparency reference
roots, audit paths and consistency proofs; for every size, index and pair of sizes it agrees with an
independent recursive implementation of the RFC's MTH, PATH and PROOF written here; the verifiers of
app.transparency.proofs (RFC 9162 §2.1.3.2 and §2.1.4.2) accept every true proof and refuse it once
any hash, the leaf, the root, the index or a size is changed; the gateway's leaf hash
(app.ledger.tlog) is the client's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from hypothesis import given, settings
from hypothesis import strategies as st

from app.ledger.tlog import leaf_hash_hex
from app.transparency.proofs import EMPTY_ROOT, consistency_ok, inclusion_ok, leaf_hash, root_from_inclusion
from app.transparency.tree import LogTree

# Certificate Transparency's reference tree (certificate-transparency merkle_tree_test, RFC 6962 =
# RFC 9162 §2.1 hashing): the leaf inputs, the root of the first n of them, known proofs.
CT_INPUTS = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION = {  # (leaf index, tree size): audit path
    (0, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (5, 8): [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
    (2, 3): ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
    (1, 5): [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ],
    (0, 1): [],
}
CT_CONSISTENCY = {  # (first, second): proof
    (1, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (6, 8): [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
    (2, 5): [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ],
    (3, 8): [
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
}


# --- RFC 9162 §2.1 written out again, recursively, with hashlib only ---------------------------------
def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(entries: list[bytes]) -> bytes:
    if not entries:
        return _h(b"")
    if len(entries) == 1:
        return _h(b"\x00" + entries[0])
    k = _k(len(entries))
    return _h(b"\x01" + mth(entries[:k]) + mth(entries[k:]))


def path(m: int, entries: list[bytes]) -> list[bytes]:
    if len(entries) == 1:
        return []
    k = _k(len(entries))
    if m < k:
        return [*path(m, entries[:k]), mth(entries[k:])]
    return [*path(m - k, entries[k:]), mth(entries[:k])]


def subproof(m: int, entries: list[bytes], whole: bool) -> list[bytes]:
    n = len(entries)
    if m == n:
        return [] if whole else [mth(entries)]
    k = _k(n)
    if m <= k:
        return [*subproof(m, entries[:k], whole), mth(entries[k:])]
    return [*subproof(m - k, entries[k:], False), mth(entries[:k])]


def tree_of(entries: list[bytes]) -> LogTree:
    tree = LogTree()
    tree.append_leaf_hashes(leaf_hash(e) for e in entries)
    return tree


def flipped(digest: bytes, bit: int = 0) -> bytes:
    return bytes([digest[0] ^ (1 << bit), *digest[1:]])


def each_flipped(hashes: list[bytes]) -> Iterator[list[bytes]]:
    """The path with one hash changed by one bit, for each hash."""
    for position in range(len(hashes)):
        bad = [*hashes]
        bad[position] = flipped(bad[position], position % 8)
        yield bad


def draw_tree(entries: list[bytes], data: st.DataObject, low: str, high: str) -> tuple[LogTree, int, int]:
    """The tree of `entries` and two sizes 1 <= a <= b <= len(entries) (labels `low`, `high`)."""
    b = data.draw(st.integers(1, len(entries)), label=high)
    return tree_of(entries), data.draw(st.integers(1, b), label=low), b


def test_reference_roots_and_the_empty_tree() -> None:
    tree = LogTree()
    assert tree.root(0) == EMPTY_ROOT == _h(b"")
    for size, expected in enumerate(CT_ROOTS, start=1):
        tree.append_leaf_hashes([leaf_hash(CT_INPUTS[size - 1])])
        assert tree.root().hex() == expected
        assert tree.root(size).hex() == expected
    assert [tree.root(n).hex() for n in range(1, 9)] == CT_ROOTS  # earlier sizes from the full tree


def test_reference_inclusion_proofs() -> None:
    tree = tree_of(CT_INPUTS)
    for (index, size), expected in CT_INCLUSION.items():
        got = tree.inclusion_path(index, size)
        assert [d.hex() for d in got] == expected, (index, size)
        assert inclusion_ok(index, size, leaf_hash(CT_INPUTS[index]), got, bytes.fromhex(CT_ROOTS[size - 1]))


def test_reference_consistency_proofs() -> None:
    tree = tree_of(CT_INPUTS)
    for (first, second), expected in CT_CONSISTENCY.items():
        got = tree.consistency_path(first, second)
        assert [d.hex() for d in got] == expected, (first, second)
        roots = bytes.fromhex(CT_ROOTS[first - 1]), bytes.fromhex(CT_ROOTS[second - 1])
        assert consistency_ok(first, second, *roots, got)
        assert not consistency_ok(first, second, roots[1], roots[0], got)  # swapped roots


def test_the_ledger_and_the_client_hash_leaves_alike() -> None:
    for entry in CT_INPUTS:
        assert leaf_hash_hex(entry) == leaf_hash(entry).hex() == _h(b"\x00" + entry).hex()


entries_st = st.lists(st.binary(max_size=12), min_size=1, max_size=140, unique=True)  # distinct leaves


@settings(max_examples=120, deadline=None)
@given(entries=entries_st, data=st.data())
def test_inclusion_matches_the_rfc_and_fails_when_anything_changes(
    entries: list[bytes], data: st.DataObject
) -> None:
    tree, index, size = draw_tree(entries, data, "index + 1", "size")
    index -= 1
    root = tree.root(size)
    assert root == mth(entries[:size])
    got = tree.inclusion_path(index, size)
    assert got == path(index, entries[:size])
    leaf = leaf_hash(entries[index])
    assert inclusion_ok(index, size, leaf, got, root)
    assert not inclusion_ok(index, size, flipped(leaf), got, root)
    assert not inclusion_ok(index, size, leaf, got, flipped(root, 7))
    assert not any(inclusion_ok(index, size, leaf, bad, root) for bad in each_flipped(got))
    if size > 1:
        assert not inclusion_ok(index ^ 1 if index ^ 1 < size else index - 1, size, leaf, got, root)
        assert not inclusion_ok(index, size, leaf, got[:-1], root)
    assert not inclusion_ok(index, size, leaf, [*got, root], root)
    assert root_from_inclusion(size, size, leaf, got) is None  # index out of range


@settings(max_examples=120, deadline=None)
@given(entries=entries_st, data=st.data())
def test_consistency_matches_the_rfc_and_fails_when_anything_changes(
    entries: list[bytes], data: st.DataObject
) -> None:
    tree, first, second = draw_tree(entries, data, "first", "second")
    old, new = tree.root(first), tree.root(second)
    got = tree.consistency_path(first, second)
    assert got == subproof(first, entries[:second], True)
    assert consistency_ok(first, second, old, new, got)
    if first == second:
        assert got == []
        return
    assert not consistency_ok(first, second, flipped(old), new, got)
    assert not consistency_ok(first, second, old, flipped(new), got)
    assert not any(consistency_ok(first, second, old, new, bad) for bad in each_flipped(got))
    assert not consistency_ok(first, second, old, new, got[:-1])
    assert not consistency_ok(first, second, old, new, [*got, new])
    # a rewritten old leaf: the new tree no longer extends the old head
    rewritten = [*entries[:second]]
    rewritten[data.draw(st.integers(0, first - 1), label="rewritten")] += b"!"
    other = tree_of(rewritten)
    assert not consistency_ok(first, second, old, other.root(second), other.consistency_path(first, second))
