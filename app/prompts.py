"""The chat prompts of the mechanism (``docs/MECHANISM.md``; wording of the paper, App. C.1).

- reference ``π_ref``: a helpful assistant answering the query;
- advertiser ``π_i``: ``Answer the question advertising <name>, <description>.`` (or her own instruction);
- context-aware ``π_con``: ``Answer the query. Try to mention <A>, who <desc A>, and <B>, who <desc B>.``

The query and everything an advertiser provides are data: ``sanitize_text`` neutralises chat-template
control sequences, control characters and line-leading fake role headers, so no input can open a new
turn or role once the messages are rendered by a chat template.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

REFERENCE_SYSTEM_PROMPT = "You are a helpful assistant."

__all__ = [
    "REFERENCE_SYSTEM_PROMPT",
    "AdvertiserProfile",
    "ChatMessage",
    "advertiser_messages",
    "auction_chats",
    "context_messages",
    "reference_messages",
    "sanitize_text",
]


@dataclass(frozen=True)
class AdvertiserProfile:
    name: str
    description: str
    instruction: str | None = None  # her own system prompt; None: the paper's default


class ChatMessage(TypedDict):
    role: str
    content: str


# Characters removed outright: C0/C1 controls (except tab and newline; CR, U+2028/9 become newlines),
# format characters (zero-width, bidi overrides — they can hide a token from a filter), surrogates,
# private-use and unassigned code points.
# ZWJ/ZWNJ are kept: scripts and emoji need them, and they can only split tokens, never form one.
_KEPT_FORMAT = {"\u200c", "\u200d"}
_REMOVED_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn"}

# Special tokens of chat templates. A space is inserted after the opening bracket, which breaks the
# token for the tokenizer but keeps the text readable; insertion can never create a new match.
_PIPE_OPEN = re.compile(r"<\|")  # <|im_start|>, <|eot_id|>, <|endoftext|>, ...
_PIPE_CLOSE = re.compile(r"\|>")
_ANGLE_TAG = re.compile(r"<(?=/?[A-Za-z_][\w.:-]*>)")  # <s>, </s>, <unk>, <start_of_turn>, <<SYS>>
_SQUARE_TAG = re.compile(r"\[(?=/?[A-Z][A-Z0-9_]+\])")  # [INST], [/INST], [SYSTEM_PROMPT], ...

# A line that starts like a transcript turn ("user:", "### Assistant:", "Human:") can fake a turn for
# plain-text templates and for the model itself; its colon becomes " -".
_ROLE_WORDS = (
    "system|user|assistant|human|ai|bot|model|tool|tools|function|developer|ipython"
    "|instruction|instructions|response|input"
)
_ROLE_HEADER = re.compile(
    rf"^(?P<head>[ \t>#*_-]*(?:{_ROLE_WORDS})[ \t]*(?:\([^)\n]*\))?[ \t]*):",
    re.IGNORECASE | re.MULTILINE,
)
# Exotic spaces (NBSP, ogham, ideographic ...) become plain spaces so the header pattern sees them.
_OTHER_SPACE = re.compile(r"[^\S\n\t]")
_TRAILING_SPACE = re.compile(r"[ \t]+$", re.MULTILINE)
_ANY_WHITESPACE = re.compile(r"\s+")


def _strip_invisible(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n").replace("\u2029", "\n")
    return "".join(
        char
        for char in text
        if char in "\n\t" or char in _KEPT_FORMAT or unicodedata.category(char) not in _REMOVED_CATEGORIES
    )


def sanitize_text(text: str) -> str:
    """Make untrusted text safe to place inside one chat message; keeps line breaks and indentation.

    Order matters, and makes the function idempotent: removals and NFKC first (full-width ``＜｜``
    become ``<|``; removing before NFKC lets it see the text as it will stay), so nothing changed
    later can join two halves of a token; then control tokens and line-leading role headers are
    broken by insertions only.
    """
    text = _strip_invisible(unicodedata.normalize("NFKC", _strip_invisible(text)))
    text = _OTHER_SPACE.sub(" ", text)
    text = _TRAILING_SPACE.sub("", text)
    text = _PIPE_OPEN.sub("< |", text)
    text = _PIPE_CLOSE.sub("| >", text)
    text = _ANGLE_TAG.sub("< ", text)
    text = _SQUARE_TAG.sub("[ ", text)
    text = _ROLE_HEADER.sub(r"\g<head> -", text)
    return text.strip()


def _sanitize_inline(text: str) -> str:
    """sanitize_text on one line: every whitespace run becomes one space (names, descriptions)."""
    return _ANY_WHITESPACE.sub(" ", sanitize_text(text)).strip()


def _required(field: str, value: str) -> str:
    if not value:
        raise ValueError(f"{field} is empty after sanitisation")
    return value


def _name(advertiser: AdvertiserProfile) -> str:
    return _required("advertiser name", _sanitize_inline(advertiser.name))


def _description(advertiser: AdvertiserProfile) -> str:
    # The templates end with their own period; a description's trailing one would double it.
    description = _sanitize_inline(advertiser.description).rstrip(". ")
    return _required(f"description of advertiser {advertiser.name!r}", description)


def _query(query: str) -> str:
    return _required("query", sanitize_text(query))


def _chat(system: str, query: str) -> list[ChatMessage]:
    return [ChatMessage(role="system", content=system), ChatMessage(role="user", content=_query(query))]


def reference_messages(query: str) -> list[ChatMessage]:
    """The reference LLM π_ref: a helpful assistant answering the query."""
    return _chat(REFERENCE_SYSTEM_PROMPT, query)


def advertiser_messages(query: str, advertiser: AdvertiserProfile) -> list[ChatMessage]:
    """Advertiser i's LLM π_i: her instruction if given, else the paper's advertising instruction."""
    if advertiser.instruction is not None:
        system = _required(
            f"instruction of advertiser {advertiser.name!r}", sanitize_text(advertiser.instruction)
        )
    else:
        system = f"Answer the question advertising {_name(advertiser)}, {_description(advertiser)}."
    return _chat(system, query)


def context_messages(query: str, advertisers: Sequence[AdvertiserProfile]) -> list[ChatMessage]:
    """The context-aware proposal π_con: asks to mention every advertiser.

    With no advertisers there is nothing to mention: the instruction is just ``Answer the query.``
    """
    if not advertisers:
        return _chat("Answer the query.", query)
    mentions = [f"{_name(advertiser)}, who {_description(advertiser)}" for advertiser in advertisers]
    # The paper's "A, who ..., and B, who ..."; a comma list with "and" before the last beyond two.
    listed = mentions[0] if len(mentions) == 1 else ", ".join(mentions[:-1]) + ", and " + mentions[-1]
    return _chat(f"Answer the query. Try to mention {listed}.", query)


def auction_chats(query: str, advertisers: Sequence[AdvertiserProfile]) -> list[list[ChatMessage]]:
    """Every prompt of one auction, in the order the workers see them: the reference, the
    context-aware proposal, then each advertiser's."""
    return [
        reference_messages(query),
        context_messages(query, advertisers),
        *(advertiser_messages(query, advertiser) for advertiser in advertisers),
    ]
