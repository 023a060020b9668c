"""What text the gateway accepts, written as JSON-schema patterns for the OpenAPI document.

A query, name, description or instruction is refused (422) when nothing of it is left after
`app.prompts.sanitize_text` (invisible, control, private-use and unassigned characters removed,
NFKC, whitespace trimmed; a description also loses trailing dots). That is the same as "holds at
least one character that survives on its own", and a JSON-schema `pattern` can say that: a class of
every such code point (ECMA-262 patterns search, they are not anchored). The class is computed from
the real sanitiser, so the document cannot drift from it: ~145k code points in ~700 ranges, built
once per process on the first request for the document (~2 s). Imports only `app.prompts`.
See docs/DESIGN.md § Looking at an auction.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from functools import lru_cache

from app.prompts import sanitize_text

_ALWAYS_REMOVED = {"Cn", "Co", "Cs"}  # unassigned, private use, surrogates: never kept
_CLASS_SPECIAL = {"\\", "]", "[", "^", "-"}


def _survives_text(char: str) -> bool:
    return bool(sanitize_text(char))


def _survives_description(char: str) -> bool:
    return bool(sanitize_text(char).rstrip(". "))


def _char_class(survives: Callable[[str], bool]) -> str:
    ranges: list[list[int]] = []
    for code_point in range(0x110000):
        char = chr(code_point)
        if unicodedata.category(char) in _ALWAYS_REMOVED or not survives(char):
            continue
        if ranges and ranges[-1][1] == code_point - 1:
            ranges[-1][1] = code_point
        else:
            ranges.append([code_point, code_point])

    def literal(code_point: int) -> str:
        char = chr(code_point)
        return "\\" + char if char in _CLASS_SPECIAL else char

    parts = [literal(a) if a == b else f"{literal(a)}-{literal(b)}" for a, b in ranges]
    return "[" + "".join(parts) + "]"


@lru_cache(maxsize=1)
def text_patterns() -> dict[str, str]:
    """`pattern` per kind of field: `text` (query, name, instruction) and `description`."""
    return {"text": _char_class(_survives_text), "description": _char_class(_survives_description)}
