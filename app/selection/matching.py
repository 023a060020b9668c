"""Keyword targeting, negative keywords and the ranking rule of the selection step: pure functions.

Broad match: a keyword matches a query when every one of its words is among the query's words, in any
order, ignoring case, accents' case folding (str.casefold), punctuation and a plural ``-s``/``-es``/
``-ies`` (`words`). A campaign's targeted keywords admit it: one matched keyword lets it in below the
relevance threshold (the advertiser named that query). Its negative keywords exclude it: any one matched
leaves it out, whatever its relevance (reason ``negative_keyword``). Ranking is by relevance alone (the
cosine of the query and the campaign's text): a keyword match admits, it never ranks above a more
relevant campaign, so adding keywords cannot push another campaign out. Imports the standard library only;
see docs/DESIGN.md § Selection.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")


def _singular(word: str) -> str:
    """A plural's stem: flies → fly, boxes → box, guitars → guitar (class, bus, analysis stay)."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("sses", "xes", "zes", "ches", "shes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def words(text: str) -> frozenset[str]:
    """The text's words for matching: case-folded, apostrophes dropped, plurals folded to singular."""
    return frozenset(_singular(w.casefold().replace("'", "").replace("’", "")) for w in _WORD.findall(text))


def keyword_terms(keywords: Iterable[str]) -> tuple[frozenset[str], ...]:
    """Each keyword as the set of words a query must all contain (keywords without words dropped)."""
    terms = (words(keyword) for keyword in keywords)
    return tuple(term for term in terms if term)


def matches_any(query_words: frozenset[str], terms: Iterable[frozenset[str]]) -> bool:
    """Broad match: some term's words are all among the query's words."""
    return any(term <= query_words for term in terms)


@dataclass(frozen=True)
class Admission:
    """Whether the query reaches the campaign by relevance or by a targeted keyword."""

    keyword_match: bool
    negative_match: bool
    relevant: bool

    @property
    def admitted(self) -> bool:
        return not self.negative_match and (self.relevant or self.keyword_match)


def admit(
    relevance: float,
    min_relevance: float,
    query_words: frozenset[str],
    keywords: Iterable[frozenset[str]],
    negatives: Iterable[frozenset[str]],
) -> Admission:
    """The ranking rule's admission: relevance ≥ threshold or a targeted keyword, and no negative one."""
    return Admission(
        keyword_match=matches_any(query_words, keywords),
        negative_match=matches_any(query_words, negatives),
        relevant=relevance >= min_relevance,
    )


def rank_key(campaign_id: str, relevance: float) -> tuple[float, str]:
    """Most relevant first; equal relevance by id (a total order: the same registry, the same pick)."""
    return (-relevance, campaign_id)
