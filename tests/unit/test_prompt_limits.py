"""Which request field a too-long prompt is blamed on (app.auction.sampler.check_prompt_lengths),
and the bound NFKC puts on the text behind a character limit (app.contract.limits.NFKC_MAX_EXPANSION)."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.auction.sampler import PromptTooLongError, check_prompt_lengths
from app.contract.limits import NFKC_MAX_EXPANSION, nfkc_length

LIMIT = 100


def _locs(lengths: list[int]) -> list[tuple[str | int, ...]]:
    with pytest.raises(PromptTooLongError) as caught:
        check_prompt_lengths(lengths, LIMIT)
    assert caught.value.limit == LIMIT
    return [loc for loc, _ in caught.value.problems]


def test_within_the_limit_passes() -> None:
    check_prompt_lengths([LIMIT, LIMIT, LIMIT, 1], LIMIT)


def test_a_long_query_is_named_alone() -> None:
    assert _locs([LIMIT + 1, 5 * LIMIT, 2 * LIMIT, 2 * LIMIT]) == [("query",)]


def test_each_long_advertiser_is_named() -> None:
    assert _locs([10, 5 * LIMIT, 20, LIMIT + 1, 30, 2 * LIMIT]) == [("advertisers", 1), ("advertisers", 3)]


def test_advertisers_together_are_named_when_none_is_long_alone() -> None:
    assert _locs([10, LIMIT + 1, 60, 60]) == [("advertisers",)]


@given(lengths=st.lists(st.integers(0, 3 * LIMIT), min_size=3, max_size=10))
def test_refused_exactly_when_some_prompt_is_over(lengths: list[int]) -> None:
    if max(lengths) <= LIMIT:
        check_prompt_lengths(lengths, LIMIT)
    else:
        assert _locs(lengths)


def test_nfkc_lengthens_no_code_point_more_than_the_stated_bound() -> None:
    """Every code point of this Python's Unicode: the character gate (code points as sent) bounds the text
    the workers tokenize to NFKC_MAX_EXPANSION times the limit; U+FDFA reaches the bound."""
    scalar_values = (point for point in range(sys.maxunicode + 1) if not 0xD800 <= point < 0xE000)
    longest = max(nfkc_length(chr(point)) for point in scalar_values)
    assert longest == NFKC_MAX_EXPANSION == nfkc_length("\ufdfa")
    assert nfkc_length("ﬁ") == 2
    assert nfkc_length("plain") == 5
