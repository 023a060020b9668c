"""The cost of an auction in model tokens (app.auction.cost): the formula, its monotonicity, that it is
the workers' own unit summed over the auction's requests, that the prompt bound is never below the real
tokenizer's count, and the 422 that names the fields making an auction too big."""

from __future__ import annotations

from dataclasses import replace
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.auction.cost import (
    AuctionShape,
    auction_cost,
    enforce_cost_limit,
    max_auction_cost,
    prompt_token_bound,
    request_cost_bound,
)
from app.contract.limits import LimitExceededError
from app.contract.request import AuctionRequest
from app.prompts import AdvertiserProfile, auction_chats
from app.settings import Settings
from workers.queue_limit import request_cost


def _shape(**overrides: Any) -> AuctionShape:
    values: dict[str, Any] = {
        "candidates": 4,
        "max_tokens": 10,
        "proposal": "context",
        "reference_prompt": 20,
        "context_prompt": 50,
        "advertiser_prompts": (30, 40),
        "workers": 1,
    }
    values.update(overrides)
    return AuctionShape(**values)


def test_generation_and_every_scoring_context_by_hand() -> None:
    """Generation: prompt + M × max_tokens per worker share; scoring: M × (prompt + max_tokens + 1) per
    scoring context (reference, each advertiser, and the context prompt for the mixture)."""
    cost = auction_cost(_shape())
    assert cost.generation == 50 + 4 * 10
    assert cost.scoring == 4 * (20 + 11) + 4 * (30 + 11) + 4 * (40 + 11)
    # Two workers: the generation prompt is prefilled once per share.
    assert auction_cost(_shape(workers=2)).generation == 2 * 50 + 4 * 10
    mixture = auction_cost(_shape(proposal="mixture"))
    assert mixture.generation == (50 + 2 * 10) + (20 + 2 * 10)
    assert mixture.scoring == cost.scoring + 4 * (50 + 11)
    assert auction_cost(_shape(proposal="reference")).generation == 20 + 4 * 10


def test_the_formula_is_the_workers_unit_summed_over_the_requests() -> None:
    """What a worker's queue bound counts for the auction's requests (workers.queue_limit.request_cost):
    the generation shares and the scoring batch, exactly."""
    shape = _shape(candidates=5, workers=2)
    generation = request_cost([50], 3, 10) + request_cost([50], 2, 10)
    sequences = [p + 10 for p in (20, 30, 40) for _ in range(5)]  # every reply at its longest
    assert auction_cost(shape).total == generation + request_cost(sequences, 1, 1)


_sizes = st.integers(1, 3000)


@settings(max_examples=300, deadline=None)
@given(
    m=st.integers(1, 64),
    t=st.integers(1, 512),
    ref=_sizes,
    extra=st.integers(0, 3000),
    ads=st.lists(_sizes, max_size=16),
    workers=st.integers(1, 8),
    share=st.floats(0.01, 0.99),
    field=st.sampled_from(["candidates", "max_tokens", "ref", "ctx", "ad", "new_ad", "workers", "proposal"]),
    step=st.integers(1, 100),
)
def test_monotone_in_every_field(
    m: int,
    t: int,
    ref: int,
    extra: int,
    ads: list[int],
    workers: int,
    share: float,
    field: str,
    step: int,
) -> None:
    """More of anything never costs less: M, max_tokens, any prompt, one more advertiser, more workers,
    and reference ≤ context ≤ mixture (the context prompt holds the reference's query, so it is longer)."""
    shape = AuctionShape(m, t, "context", ref, ref + extra, tuple(ads), share, workers)
    bigger = {
        "candidates": replace(shape, candidates=m + step),
        "max_tokens": replace(shape, max_tokens=t + step),
        "ref": replace(shape, reference_prompt=ref + step, context_prompt=ref + extra + step),
        "ctx": replace(shape, context_prompt=ref + extra + step),
        "ad": replace(shape, advertiser_prompts=(*ads[:-1], ads[-1] + step) if ads else (step,)),
        "new_ad": replace(shape, advertiser_prompts=(*ads, step)),
        "workers": replace(shape, workers=workers + step),
        "proposal": replace(shape, proposal="mixture"),
    }[field]
    assert auction_cost(bigger).total >= auction_cost(shape).total
    assert auction_cost(replace(shape, proposal="reference")).total <= auction_cost(shape).total


@cache
def _tokenizer() -> Any:
    from workers.models import load_smollm2_tokenizer

    # `make venv` installs the SmolLM2 weights: a missing tokenizer is a failure, never a skip
    return load_smollm2_tokenizer()


def _real_tokens(messages: Any) -> int:
    tokenizer = _tokenizer()
    text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    return len(tokenizer.encode(text, add_special_tokens=False))


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=300)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(query=_text, name=_text, description=_text)
def test_the_prompt_bound_is_never_below_the_real_tokenizer(query: str, name: str, description: str) -> None:
    """Sound before tokenize: for any text (any script, emoji, control characters, template tokens), the
    bound counts at least the tokens the workers' SmolLM2 tokenizer and chat template produce."""
    profile = AdvertiserProfile(name=name, description=description)
    try:
        chats = auction_chats(query, [profile])
    except ValueError:  # renders to nothing: refused by the request model
        return
    big = Settings(max_prompt_tokens=100_000)
    for chat in chats:
        assert prompt_token_bound(chat, big) >= _real_tokens(chat)


def _request(**fields: Any) -> AuctionRequest:
    advertisers = [
        {"id": f"ad{i}", "name": f"Advertiser {i}", "description": "selling guitars and lessons"}
        for i in range(fields.pop("n", 2))
    ]
    body = {"query": "Tell me about guitars.", "advertisers": advertisers, **fields}
    return AuctionRequest.model_validate(body)


def test_the_issues_big_request_is_refused_naming_its_fields() -> None:
    """M=64, 512 tokens, 16 advertisers, the mixture, a 200-word query, test: 422 naming candidates,
    max_tokens, advertisers and query, with its cost and the limit (test auctions count the same)."""
    request = _request(
        query=" ".join(["guitar"] * 200), n=16, candidates=64, max_tokens=512, proposal="mixture", test=True
    )
    settings_ = Settings()
    with pytest.raises(LimitExceededError) as refused:
        enforce_cost_limit(request, settings_, workers=1)
    named = {error["loc"][1] for error in refused.value.errors}
    assert {"candidates", "max_tokens", "advertisers", "query"} <= named
    limit = max_auction_cost(settings_)
    assert limit == settings_.max_tokens_in_flight // 2
    for error in refused.value.errors:
        assert error["ctx"]["limit"] == limit and error["ctx"]["cost"] > limit
        assert str(error["ctx"]["cost"]) in error["msg"]
    fits = next(e for e in refused.value.errors if e["loc"][1] == "candidates")["ctx"]["fits"]
    assert request_cost_bound(request.model_copy(update={"candidates": fits}), settings_, 1) <= limit
    assert request_cost_bound(request.model_copy(update={"candidates": fits + 1}), settings_, 1) > limit


def test_a_one_token_auction_is_costed_by_its_scoring() -> None:
    """M=1, 1 token, 16 advertisers, a 300-word query: 17 scored prompts of the query each (was 18)."""
    request = _request(query=" ".join(["guitar"] * 300), n=16, candidates=1, max_tokens=1)
    cost = request_cost_bound(request, Settings(), workers=1)
    assert cost > 17 * 300  # every scoring context holds the 300-word query
    assert enforce_cost_limit(request, Settings(), workers=1) == cost


def test_a_default_auction_is_admissible_and_small() -> None:
    request = _request()
    cost = enforce_cost_limit(request, Settings(), workers=1)
    assert 0 < cost < max_auction_cost(Settings()) // 10
