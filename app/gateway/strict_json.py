"""Strict JSON for request bodies: what `json.loads` lets through and our API must not.

Python's JSON decoder accepts ``NaN``, ``Infinity`` and ``-Infinity`` literals, lone UTF-16
surrogate escapes (``"\\ud800"``: a `str` that cannot be encoded back to UTF-8) and duplicate object
keys (the last one silently wins). RFC 8259 allows none of them in interoperable JSON (§6: "Numeric
values that cannot be represented ... such as Infinity and NaN are not permitted"; §4: names
"SHOULD be unique"; §8.2: strings of unpaired surrogates are unpredictable). Each reaches a handler as
a value that the rest of the stack cannot serialise, which made the gateway answer 500 and drop the
keep-alive connection. So every body is decoded here first, as UTF-8 only, and each of those is
refused with the JSON path of the offending value (a 422 naming the field).

Two more bodies gave a 500 and are refused here the same way (RFC 8259 §9: "An implementation may set
limits on the size of texts ..., the maximum depth of nesting ... the range and precision of
numbers"): an integer literal of more digits than Python converts (`sys.get_int_max_str_digits()`,
4,300: `int()` raised ValueError), and a value nested deeper than MAX_JSON_DEPTH (64, the default of
.NET's System.Text.Json; this API's bodies nest 3 deep), found by a scan of the text before it is
decoded, so neither the decoder, nor the checks below, nor pydantic, nor the 422's echo of the input
ever recurses deeper than that.

`StrictJSONRoute` is the route class of the gateway's router: it decodes the body once, refuses it or
hands the decoded value on (Starlette caches it as the request's JSON, so FastAPI does not parse the
body a second time). Imports nothing of the project.
See docs/DESIGN.md § Errors and limits.
"""

from __future__ import annotations

import email.message
import json
import re
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

_SURROGATE = re.compile("[\ud800-\udfff]")
Loc = tuple[str | int, ...]

MAX_JSON_DEPTH = 64
# The tokens that decide nesting and paths: a string literal (an unterminated one runs to the end:
# every match succeeds, so the scan stays linear), or one structural character.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\\?\Z)|[\[\]{}:,]', re.DOTALL)


class _NonFinite:
    """Stands where the body had a NaN/Infinity literal, so the path to it can be reported."""

    def __init__(self, literal: str) -> None:
        self.literal = literal


class _BigInteger:
    """Stands where the body had an integer literal too long to convert (its path is reported)."""

    def __init__(self, literal: str) -> None:
        self.digits = len(literal.lstrip("-"))


def _integer(literal: str) -> int | _BigInteger:
    limit = sys.get_int_max_str_digits()
    if limit and len(literal) - literal.startswith("-") > limit:
        return _BigInteger(literal)
    return int(literal)


class _Object(dict[str, Any]):
    """A decoded JSON object that remembers the keys it saw more than once."""

    duplicates: tuple[str, ...] = ()


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    decoded = _Object(pairs)
    if len(decoded) != len(pairs):
        seen: set[str] = set()
        decoded.duplicates = tuple(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]
    return decoded


def _error(kind: str, loc: Loc, message: str) -> dict[str, Any]:
    return {"type": kind, "loc": ("body", *loc), "msg": message, "input": None}


def _key(literal: str) -> str | int:
    try:
        key = json.loads(literal)
    except ValueError:
        return literal[1:-1]
    return key if isinstance(key, str) else literal[1:-1]


def too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> Loc | None:
    """The JSON path of the first array or object of `text` nested deeper than `limit`, else None.

    A linear scan (no recursion, no decoding): a body with no more brackets than `limit` is passed
    at once; only the others are tokenized. Paths follow the text even when it is not valid JSON.
    """
    if text.count("[") + text.count("{") <= limit:
        return None
    path: list[str | int] = []
    containers: list[str] = []  # "{" or "[" per open level
    expect_key = False
    for token in _TOKEN.finditer(text):
        char = token.group()
        if char in "[{":
            if len(containers) == limit:
                return tuple(path)
            containers.append(char)
            path.append(0 if char == "[" else "")
            expect_key = char == "{"
        elif char in "]}":
            if containers:
                containers.pop()
                path.pop()
            expect_key = False
        elif char == ",":
            if containers and containers[-1] == "[":
                path[-1] = int(path[-1]) + 1
            expect_key = bool(containers) and containers[-1] == "{"
        elif char == ":":
            expect_key = False
        elif expect_key:  # a string literal where an object's key stands
            path[-1] = _key(char)
    return None


def nesting(value: Any) -> int:
    """How deep `value` nests lists and dicts (0: a scalar), without recursion."""
    deepest, level = 0, [(value, 0)]
    while level:
        item, depth = level.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list | tuple):
            deepest = max(deepest, depth + 1)
            level.extend((child, depth + 1) for child in item)
    return deepest


def _find_problems(value: Any, loc: Loc, errors: list[dict[str, Any]]) -> None:
    if isinstance(value, _NonFinite):
        errors.append(
            _error("json_invalid", loc, f"{value.literal} is not valid JSON (only finite numbers are)")
        )
    elif isinstance(value, _BigInteger):
        limit = sys.get_int_max_str_digits()
        errors.append(
            _error("json_invalid", loc, f"integer of {value.digits} digits (more than {limit} are refused)")
        )
    elif isinstance(value, str):
        if _SURROGATE.search(value):
            errors.append(
                _error("string_unicode", loc, "string holds a lone UTF-16 surrogate (not a Unicode scalar)")
            )
    elif isinstance(value, dict):
        for key in getattr(value, "duplicates", ()):
            errors.append(_error("json_invalid", (*loc, key), f"duplicate key {key!r} in one JSON object"))
        for key, item in value.items():
            if _SURROGATE.search(key):
                errors.append(_error("string_unicode", loc, "object key holds a lone UTF-16 surrogate"))
                continue
            _find_problems(item, (*loc, key), errors)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _find_problems(item, (*loc, index), errors)


def decode_strict(body: bytes) -> Any:
    """The JSON value of `body`, or RequestValidationError naming every offending path.

    Errors carry no ``input``: what they would echo is exactly what cannot be encoded.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestValidationError(
            [_error("json_invalid", (error.start,), f"body is not valid UTF-8 at byte {error.start}")]
        ) from None
    deep = too_deep(text)
    if deep is not None:
        raise RequestValidationError(
            [_error("json_invalid", deep, f"JSON nested more than {MAX_JSON_DEPTH} levels deep")]
        )
    try:
        value = json.loads(text, parse_constant=_NonFinite, parse_int=_integer, object_pairs_hook=_object)
    except json.JSONDecodeError as error:
        raise RequestValidationError(
            [_error("json_invalid", (error.pos,), f"JSON decode error: {error.msg}")]
        ) from None
    except RecursionError:
        raise RequestValidationError([_error("json_invalid", (), "JSON nested too deeply")]) from None
    errors: list[dict[str, Any]] = []
    _find_problems(value, (), errors)
    if errors:
        raise RequestValidationError(errors)
    return value


def _is_json(content_type: str | None) -> bool:
    """FastAPI's own rule for a JSON body (strict content type: no header means not JSON)."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


class StrictJSONRoute(APIRoute):
    """An APIRoute whose JSON bodies go through `decode_strict` before FastAPI reads them."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            if request.method in {"POST", "PUT", "PATCH"}:
                body = await request.body()
                if body and _is_json(request.headers.get("content-type")):
                    # Starlette's Request.json() returns this cached value: one parse per request.
                    request._json = decode_strict(body)
            return await handler(request)

        return strict_handler
