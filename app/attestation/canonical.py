"""Canonical JSON (RFC 8785, JCS) for what is signed and digested, via the `rfc8785` package.

Job: `canonical_bytes(obj)` — the one byte string a JSON value signs as (keys sorted by UTF-16 code
units, numbers in ECMAScript's shortest round-trip form, no whitespace), and `sha256_hex(obj)`, its
SHA-256 in lower-case hex. Both sides of a signature (the gateway signing a record, `mosaic verify`
checking it) call this function, so the two agree byte for byte.

Not finite numbers: JSON has no NaN or ±inf and RFC 8785 refuses them; a record holding one cannot be
signed, so `canonical_bytes` raises `NonCanonicalError` (a ValueError) naming the path of the value
(`candidates[3].log_ref`). The auction then fails before its billing write (500 naming the cause):
nothing is stored unsigned and nothing is billed. The mechanism refuses non-finite inputs before
that (`app.mechanism`), so this is the last guard, not a path taken. Integers beyond ±(2^53 − 1) are
refused the same way (JCS numbers are IEEE doubles). Pure: imports `rfc8785`, pydantic-core's JSON
writer (`to_json`: no models) and the standard library only. See docs/DESIGN.md § Verifiable auctions.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
from typing import Any

import rfc8785
from pydantic_core import PydanticSerializationError, to_json

__all__ = [
    "Canonicaliser",
    "FastPathError",
    "NonCanonicalError",
    "canonical_bytes",
    "ordered",
    "sha256_hex",
]

_MAX_SAFE_INTEGER = 2**53 - 1


class NonCanonicalError(ValueError):
    """A value with no canonical JSON form (NaN, ±inf, an integer past 2^53, a non-JSON type);
    `path` names where it is (`$` is the value itself)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


def _offending(value: Any, path: str) -> tuple[str, str] | None:
    """The first value under `value` with no canonical form, with its path (None: all fine)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, f"{value} is not a finite number")
    if isinstance(value, int):
        return None if abs(value) <= _MAX_SAFE_INTEGER else (path, f"integer {value} is past 2^53 - 1")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return (path, f"key {key!r} is not a string")
            found = _offending(item, f"{path}.{key}")
            if found is not None:
                return found
        return None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _offending(item, f"{path}[{index}]")
            if found is not None:
                return found
        return None
    return (path, f"{type(value).__name__} is not a JSON value")


# Floats Python's repr already writes as ECMAScript does: non-integral, 1e-4 <= |x| < 1e16 (both
# use fixed notation there, with the shortest round-trip digits). pydantic-core's JSON writer (Rust,
# serde_json with ryu: the shortest round-trip digits, fixed notation for 1e-5 <= |x| < 1e16) writes
# them alike too.
_REPR_LOW, _REPR_HIGH = 1e-4, 1e16
# Markers stand for the other floats: "\x00<nonce>:<n>\x00". The input's strings may not hold a NUL
# (those values go to rfc8785), so a marker in the output is always one of ours.
_NONCE = secrets.token_hex(8)
_MARKER = re.compile(rb'"\\u0000' + _NONCE.encode() + rb':([0-9]+)\\u0000"')


class FastPathError(Exception):
    """The fast path cannot write this value exactly: use `rfc8785` (`canonical_bytes` does)."""


def _safe_floats(values: list[Any] | tuple[Any, ...]) -> bool:
    """Every item a plain float that repr (and ECMAScript) write in fixed notation as they are:
    non-integral with 1e-4 <= |x| < 1e16 (C loops: min, max, any)."""
    magnitudes = list(map(abs, values))
    return (
        min(magnitudes) >= _REPR_LOW
        and max(magnitudes) < _REPR_HIGH
        and not any(map(float.is_integer, values))
    )


def ordered(value: dict[str, Any]) -> dict[str, Any]:
    """`value` with its keys in sorted order (a shallow copy): a dict built from prepared values
    (a record's shared part, a salted part) must be made so before `Canonicaliser.encode`."""
    return {key: value[key] for key in sorted(value)}


class Canonicaliser:
    """RFC 8785 through a JSON writer in C or Rust: `prepare(value)` makes a copy that a writer
    keeping dicts' insertion order writes as RFC 8785 does — every dict's keys in sorted order
    (code-point order = UTF-16 order within the BMP), integral floats below 2^53 as ints (ES writes
    5.0 as 5, -0.0 as 0), floats whose ES form differs from repr's (exponents, |x| < 1e-4) as marker
    strings — and `encode(prepared)` writes it with pydantic-core's `to_json` (Rust, ~7x the C
    `json` encoder), swapping each marker for its ES form (by `rfc8785`). Anything it cannot write
    exactly raises `FastPathError`: a NaN or ±inf, an integer past 2^53, a string holding a NUL, a
    key past U+FFFF, a lone surrogate, a non-JSON type. Parts of one prepared value (a record's
    candidates) encode without walking them again; a dict built from them must be `ordered`.
    Byte-identical to `rfc8785.dumps` (property-tested, tests/unit/test_attestation.py)."""

    def __init__(self) -> None:
        self.markers: list[bytes] = []  # the ES form of marker n

    def prepare(self, value: Any) -> Any:
        kind = type(value)
        if kind is dict:
            return self._dict(value)
        if kind is float:
            if _REPR_LOW <= abs(value) < _REPR_HIGH and not value.is_integer():
                return value  # the common case, inline
            return self._number(value)
        if kind is str:
            if "\x00" in value:
                raise FastPathError
            return value
        if kind is list or kind is tuple:
            return self._list(value)
        if value is None or kind is bool:
            return value
        if kind is int and -_MAX_SAFE_INTEGER <= value <= _MAX_SAFE_INTEGER:
            return value
        raise FastPathError  # bool and int subclasses, other types, big integers: rfc8785 decides

    def _dict(self, value: dict[Any, Any]) -> dict[str, Any]:
        """Sorted keys; scalar values checked inline (most of a record), the rest by `prepare`."""
        try:
            keys = sorted(value)
            joined = "".join(keys)  # one C pass; TypeError: a key that is not a string
        except TypeError as error:
            raise FastPathError from error
        if "\x00" in joined or (not joined.isascii() and max(joined) > "\uffff"):
            raise FastPathError
        prepared: dict[str, Any] = {}
        for key in keys:
            item = value[key]
            kind = type(item)
            plain = (  # written as it is: no call
                (kind is float and _REPR_LOW <= abs(item) < _REPR_HIGH and not item.is_integer())
                or (kind is str and "\x00" not in item)
                or item is None
                or kind is bool
                or (kind is int and -_MAX_SAFE_INTEGER <= item <= _MAX_SAFE_INTEGER)
            )
            prepared[key] = item if plain else self.prepare(item)
        return prepared

    def _list(self, value: list[Any] | tuple[Any, ...]) -> list[Any] | tuple[Any, ...]:
        """Lists of one kind checked by C loops (token ids, per-candidate figures), kept as they are."""
        if not value:
            return value
        kinds = set(map(type, value))
        if kinds == {int}:  # token ids
            if min(value) >= -_MAX_SAFE_INTEGER and max(value) <= _MAX_SAFE_INTEGER:
                return value
            raise FastPathError
        if kinds == {float} and _safe_floats(value):
            return value
        prepare = self.prepare
        return [prepare(item) for item in value]

    def _number(self, value: float) -> Any:
        magnitude = abs(value)
        if _REPR_LOW <= magnitude < _REPR_HIGH:
            return int(value) if value.is_integer() else value
        if magnitude <= _MAX_SAFE_INTEGER and value.is_integer():  # 0.0, -0.0 and exact integers
            return int(value)
        if not math.isfinite(value):
            raise FastPathError
        self.markers.append(rfc8785.dumps(value))
        return f"\x00{_NONCE}:{len(self.markers) - 1}\x00"

    def encode(self, prepared: Any) -> bytes:
        """The RFC 8785 bytes of a value made by `prepare` (or built of such values, its dicts
        `ordered`). pydantic-core writes dicts in their order, no whitespace, non-ASCII as UTF-8, and
        escapes strings as RFC 8785 does (\\b \\t \\n \\f \\r \\" \\\\, other controls as
        \\u00xx in lower case)."""
        try:
            data = to_json(prepared)
        except PydanticSerializationError as error:  # a lone surrogate (not UTF-8), too deep a value
            raise FastPathError from error
        if self.markers and b"\\u0000" in data:
            data = _MARKER.sub(lambda found: self.markers[int(found[1])], data)
        return data


def canonical_bytes(obj: Any) -> bytes:
    """The RFC 8785 bytes of a JSON value (dicts, lists, str, int, float, bool, None).

    Fast path: `Canonicaliser` (pydantic-core's Rust writer on a prepared copy), byte-identical to `rfc8785`
    (property-tested on random JSON values, tests/unit/test_attestation.py); whatever it cannot
    write exactly goes to `rfc8785` itself."""
    try:
        canonicaliser = Canonicaliser()
        return canonicaliser.encode(canonicaliser.prepare(obj))
    except FastPathError:
        pass
    try:
        return rfc8785.dumps(obj)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as error:
        found = _offending(obj, "$")
        path, message = found if found is not None else ("$", str(error))
        raise NonCanonicalError(path, message) from error


def sha256_hex(obj: Any) -> str:
    """SHA-256 of `canonical_bytes(obj)`, lower-case hex."""
    return hashlib.sha256(canonical_bytes(obj)).hexdigest()
