"""Signed audit records' building blocks (`app.attestation`): canonical JSON, keys, commitments.

Invariants:
- `canonical_bytes` is RFC 8785: byte-identical to the `rfc8785` package on any JSON value (floats
  of every magnitude, -0.0, integral floats, unicode and control characters, NUL, keys past U+FFFF),
  whichever path (fast or `rfc8785`) writes it; a NaN, ±inf or an integer past 2^53 has no canonical
  form and is refused with the path of the value (`$.candidates[1].log_ref`);
- the fast commitments (`commit`) equal their definitions (`commit_slowly`, with `canonical_bytes`
  and with the reference `rfc8785.dumps`) on random records;
- a salted part's digest changes with its salt (the digests say nothing without it) and
  `parts_sha256` is sorted;
- a key id is the RFC 7638 thumbprint of the public key (the RFC's own test vector is not Ed25519,
  so: recomputed by hand here); a JWK set round-trips to the same keys, and one whose kid is not its
  key's thumbprint is refused;
- the key file is created once, mode 0600, and read back the same on the next start (a restart
  keeps the kid); two rings loaded on one empty directory agree; rotation makes a new active key
  and serves the old one as retired.
"""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from app.attestation.canonical import NonCanonicalError, canonical_bytes
from app.attestation.commitments import (
    advertiser_part,
    commit,
    commit_slowly,
    new_salt,
    salted_digest,
)
from app.attestation.keys import (
    ACTIVE_FILE,
    SigningKey,
    jwks,
    kid_of,
    load_keyring,
    public_keys,
    raw_public,
    rotate,
)
from app.attestation.statement import attest
from tests.unit.test_sealed import make_record

floats = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
    [
        0.0,
        -0.0,
        1.0,
        -5.0,
        1e16,
        1e21,
        1e-7,
        1.5e-5,
        1e-4,
        9.999999999999999e-5,
        2.0**53,
        123456789012.5,
        5e-324,
    ]
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | floats
    | st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
)
keys = st.text(st.characters(exclude_categories=["Cs"]), max_size=6)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=24,
)


@settings(max_examples=600, deadline=None)
@given(value=json_values)
def test_canonical_bytes_are_rfc8785(value: Any) -> None:
    assert canonical_bytes(value) == rfc8785.dumps(value)


@settings(max_examples=400, deadline=None)
@given(
    values=st.lists(
        st.floats(allow_nan=False, allow_infinity=False)
        | st.floats(1e-4, 1e16, exclude_max=True)
        | st.floats(-1e16, -1e-4, exclude_min=True)
        | st.integers(-(2**53) + 1, 2**53 - 1).map(float)
        | st.builds(
            lambda mantissa, exponent: mantissa * 10.0**exponent, st.floats(-10, 10), st.integers(-30, 30)
        ),
        min_size=1,
        max_size=12,
    )
)
def test_floats_are_written_as_rfc8785_writes_them(values: list[float]) -> None:
    """Every finite double, alone, in a list (the C-loop path for lists of floats in repr's fixed
    range) and as a dict's value (the inline path), is written byte for byte as `rfc8785` writes it:
    pydantic-core's writer is trusted only where its digits and notation are ECMAScript's."""
    assert canonical_bytes(values) == rfc8785.dumps(values)
    as_dict = {f"k{index}": value for index, value in enumerate(values)}
    assert canonical_bytes(as_dict) == rfc8785.dumps(as_dict)
    assert [canonical_bytes(value) for value in values] == [rfc8785.dumps(value) for value in values]


@settings(max_examples=200, deadline=None)
@given(text=st.text(st.characters(exclude_categories=["Cs"]), max_size=40))
def test_strings_are_escaped_as_rfc8785_escapes_them(text: str) -> None:
    """Control characters, quotes, backslashes, U+2028/9, astral characters: the writer's escapes
    are RFC 8785's (a string holding a NUL goes to rfc8785 itself)."""
    assert canonical_bytes({text: [text]}) == rfc8785.dumps({text: [text]})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.0, b"1"),
        (-0.0, b"0"),
        (1e21, b"1e+21"),
        (1e16, b"10000000000000000"),
        (1.5e-5, b"0.000015"),
        (1e-7, b"1e-7"),
        ({"b": 1, "a": [0.1, "\x00\u2028é"]}, '{"a":[0.1,"\\u0000\u2028é"],"b":1}'.encode()),
        # UTF-16 order: U+1F600 is D83D DE00, before U+FB01 (code-point order says the reverse)
        ({"\ufb01": 2, "\U0001f600": 1}, '{"\U0001f600":1,"\ufb01":2}'.encode()),
    ],
)
def test_canonical_forms_of_the_rfc(value: Any, expected: bytes) -> None:
    assert canonical_bytes(value) == expected


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ({"candidates": [{"log_ref": -1.0}, {"log_ref": float("nan")}]}, "$.candidates[1].log_ref"),
        ({"tau": float("inf")}, "$.tau"),
        ([1, -float("inf")], "$[1]"),
        ({"seed": 2**60}, "$.seed"),
    ],
)
def test_a_value_with_no_canonical_form_is_refused_with_its_path(value: Any, path: str) -> None:
    with pytest.raises(NonCanonicalError) as refused:
        canonical_bytes(value)
    assert refused.value.path == path and str(refused.value).startswith(path)


def test_a_record_with_a_non_finite_value_cannot_be_signed() -> None:
    """The signer refuses (the auction then fails before its billing write: nothing stored unsigned)."""
    record = make_record(5, 2, 3, 1.0)
    record["candidates"][2]["log_ref"] = float("nan")
    with pytest.raises(NonCanonicalError, match=r"candidates\[2\]\.log_ref"):
        attest(record, SigningKey(Ed25519PrivateKey.generate()))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 5), m=st.integers(1, 9), tiny=st.booleans())
def test_the_fast_commitments_are_their_definitions(seed: int, n: int, m: int, tiny: bool) -> None:
    record = make_record(seed, n, m, 0.7)
    if tiny:  # values the fast path writes through markers, and integral floats
        record["candidates"][0]["probability"] = 3.2e-17
        record["advertisers"][0]["payment"] = 2.0
    salts = {row["id"]: new_salt() for row in record["advertisers"]}
    fast = commit(record, salts)
    assert fast == commit_slowly(record, salts) == commit_slowly(record, salts, rfc8785.dumps)
    assert fast.parts_sha256 == sorted(fast.parts_sha256) and len(fast.candidates_sha256) == m


def test_a_part_digest_depends_on_its_salt() -> None:
    record = make_record(11, 3, 4, 1.0)
    part = advertiser_part(record, record["advertisers"][0]["id"])
    salt = new_salt()
    assert len(base64.urlsafe_b64decode(salt + "==")) == 16 and salt != new_salt()
    assert salted_digest(salt, part) != salted_digest(new_salt(), part)
    assert salted_digest(salt, part) == hashlib.sha256(canonical_bytes([salt, part])).hexdigest()


def test_the_kid_is_the_rfc7638_thumbprint() -> None:
    key = Ed25519PrivateKey.generate().public_key()
    x = base64.urlsafe_b64encode(raw_public(key)).rstrip(b"=").decode()
    members = f'{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}'.encode()
    assert kid_of(key) == base64.urlsafe_b64encode(hashlib.sha256(members).digest()).rstrip(b"=").decode()


def test_keys_are_created_once_0600_and_kept_across_restarts(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    first = load_keyring(directory)
    mode = stat.S_IMODE((directory / ACTIVE_FILE).stat().st_mode)
    assert mode == 0o600, oct(mode)
    again = load_keyring(directory)
    assert again.active.kid == first.active.kid
    data = b"statement"
    again.public_keys()[first.active.kid].verify(first.active.sign(data), data)
    with pytest.raises(FileNotFoundError):
        load_keyring(tmp_path / "none", create=False)


def test_rotation_keeps_the_old_key_served_as_retired(tmp_path: Path) -> None:
    old = load_keyring(tmp_path)
    new = rotate(tmp_path)
    assert new.active.kid != old.active.kid
    served = jwks(load_keyring(tmp_path))
    assert [(k["kid"], k["status"]) for k in served["keys"]] == [
        (new.active.kid, "active"),
        (old.active.kid, "retired"),
    ]
    assert set(public_keys(json.loads(json.dumps(served)))) == {new.active.kid, old.active.kid}


def test_a_jwk_set_whose_kid_is_not_its_keys_thumbprint_is_refused(tmp_path: Path) -> None:
    served = jwks(load_keyring(tmp_path))
    served["keys"][0]["kid"] = kid_of(Ed25519PrivateKey.generate().public_key())
    with pytest.raises(ValueError, match=r"keys\[0\]\.kid"):
        public_keys(served)
    with pytest.raises(ValueError, match=r"keys\[0\]"):
        public_keys({"keys": [{"kty": "RSA"}]})
