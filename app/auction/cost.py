"""What one auction costs the workers, in model tokens: prompt + generation + scoring, one formula.

The unit is the workers' own (`workers.queue_limit.request_cost`: a completion request costs its prompt
tokens plus ``n × max_tokens`` per prompt, what WORKER_MAX_QUEUED_TOKENS bounds), summed over the
requests an auction sends (`app.auction.sampler`):

- generation: the M draws split over the W workers (``app.auction.engine_client.split_evenly``), one
  request per non-empty share, each ``prompt + share × max_tokens``; for the mixture, the context
  draws from the context prompt and the reference draws from the reference prompt;
- scoring: every scoring context (the reference, each advertiser's own prompt, and the context prompt
  for the mixture) × every candidate: one sequence ``context prompt + reply`` with ``max_tokens = 1``,
  so ``M × (prompt + max_tokens + 1)`` per context (a reply has at most ``max_tokens`` tokens).

`auction_cost` is the pure formula over token counts (monotone in every one of them: tests/unit/
test_cost.py). Before tokenization only an upper bound of each prompt's tokens is known:
`prompt_token_bound` takes the UTF-8 bytes of the rendered messages (every token of a byte-level BPE or
byte-fallback tokenizer covers at least one byte) plus PROMPT_TEMPLATE_TOKENS for the chat template,
capped at MAX_PROMPT_TOKENS (a longer prompt is refused 422 after tokenize, before any model work). So
`request_cost_bound` never counts less than the workers will, and admission (`app.auction.admission`),
the up-front limit (`enforce_cost_limit`: 422 naming the fields that make the auction big) and the
workers' queue bound all count the same units. Imports `workers.queue_limit` (pure), the prompts, the
API's models and settings, and the sampler's fixed mixture split; no I/O. See docs/DESIGN.md § Backpressure.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from app.auction.engine_client import split_evenly
from app.auction.sampler import mixture_counts
from app.contract.limits import LimitExceededError
from app.contract.request import AuctionRequest, ProposalName
from app.prompts import ChatMessage, auction_chats
from app.settings import Settings
from workers.queue_limit import request_cost

# Name a field in the 422 when taking it to its least value cuts the cost by at least this share.
_NAMED_SHARE = 0.05


@dataclass(frozen=True)
class AuctionShape:
    """Everything an auction's cost depends on, in tokens (prompts: upper bounds before tokenize)."""

    candidates: int
    max_tokens: int
    proposal: ProposalName
    reference_prompt: int
    context_prompt: int
    advertiser_prompts: tuple[int, ...]
    mixture_context_share: float = 0.5
    workers: int = 1


@dataclass(frozen=True)
class AuctionCost:
    generation: int
    scoring: int

    @property
    def total(self) -> int:
        return self.generation + self.scoring


def _generation(prompt: int, draws: int, max_tokens: int, workers: int) -> int:
    return sum(request_cost([prompt], share, max_tokens) for share in split_evenly(draws, workers) if share)


def auction_cost(shape: AuctionShape) -> AuctionCost:
    """Model tokens of the auction's worker requests (the workers' unit), at most."""
    m, t = shape.candidates, shape.max_tokens
    if shape.proposal == "context":
        draws = (m, 0)
    elif shape.proposal == "reference":
        draws = (0, m)
    else:
        draws = mixture_counts(m, shape.mixture_context_share)
    workers = max(1, shape.workers)
    generation = _generation(shape.context_prompt, draws[0], t, workers) + _generation(
        shape.reference_prompt, draws[1], t, workers
    )
    contexts = [shape.reference_prompt, *shape.advertiser_prompts]
    if shape.proposal == "mixture":
        contexts.append(shape.context_prompt)
    # One scoring sequence per (context, candidate): the context prompt and a reply of ≤ t tokens, n = 1,
    # max_tokens = 1 (the worker's unit: prompt + n × max_tokens).
    scoring = sum(request_cost([prompt + t] * m, 1, 1) for prompt in contexts)
    return AuctionCost(generation=generation, scoring=scoring)


def prompt_token_bound(messages: list[ChatMessage], settings: Settings) -> int:
    """An upper bound of the tokens of a chat once the workers render and tokenize it: its UTF-8 bytes
    (no token of a byte-level tokenizer is shorter than a byte) plus the template's own tokens, at most
    MAX_PROMPT_TOKENS (longer prompts are refused before any model work)."""
    text_bytes = sum(len(message["content"].encode("utf-8")) for message in messages)
    return min(settings.max_prompt_tokens, text_bytes + settings.prompt_template_tokens)


def request_shape(request: AuctionRequest, settings: Settings, workers: int) -> AuctionShape:
    """The shape of a served auction from its request: M and max_tokens defaulted, prompts bounded."""
    profiles = [advertiser.profile() for advertiser in request.advertisers]
    try:
        chats = auction_chats(request.query, profiles)
        bounds = [prompt_token_bound(chat, settings) for chat in chats]
    except ValueError:  # a text that renders to nothing: refused later, counted at the cap meanwhile
        bounds = [settings.max_prompt_tokens] * (2 + len(profiles))
    return AuctionShape(
        candidates=request.candidates or settings.default_candidates,
        max_tokens=request.max_tokens or settings.default_max_tokens,
        proposal=request.proposal,
        reference_prompt=bounds[0],
        context_prompt=bounds[1],
        advertiser_prompts=tuple(bounds[2:]),
        mixture_context_share=settings.mixture_context_share,
        workers=workers,
    )


def request_cost_bound(request: AuctionRequest, settings: Settings, workers: int) -> int:
    """What admission holds for the auction: its cost in model tokens, never less than the workers count."""
    return auction_cost(request_shape(request, settings, workers)).total


def max_auction_cost(settings: Settings) -> int:
    """The most one auction may cost: one key's share of the tokens in flight (no auction can be paused,
    so a larger one would hold more than a key's share while others wait)."""
    return max(1, int(settings.admission_key_share * settings.max_tokens_in_flight))


def _with(shape: AuctionShape, field: str, value: int) -> AuctionShape:
    if field == "candidates":
        return replace(shape, candidates=value)
    return replace(shape, max_tokens=value)


def _largest_fitting(shape: AuctionShape, field: str, lowest: int, current: int, limit: int) -> int:
    """The largest value of an integer field in [lowest, current] with the cost within `limit` (the cost is
    monotone in it), or lowest - 1 when none fits."""
    low, high = lowest - 1, current
    while low < high:
        middle = (low + high + 1) // 2
        if auction_cost(_with(shape, field, middle)).total <= limit:
            low = middle
        else:
            high = middle - 1
    return low


def _fewer_advertisers(shape: AuctionShape, count: int) -> AuctionShape:
    # The first `count` advertisers only; the context prompt kept as it is (an upper bound: it only
    # shrinks with fewer advertisers).
    return replace(shape, advertiser_prompts=shape.advertiser_prompts[:count])


def _cost_error(field: str, message: str, limit: int, cost: int, **ctx: Any) -> dict[str, Any]:
    return {
        "type": "cost_exceeded",
        "loc": ("body", field),
        "msg": message,
        "input": None,
        "ctx": {"limit": limit, "cost": cost, **ctx},
    }


def _field_errors(
    shape: AuctionShape, request: AuctionRequest, cost: int, limit: int
) -> list[dict[str, Any]]:
    """One error per field whose least value cuts the cost by at least _NAMED_SHARE, with what would fit."""
    head = f"the auction may cost {cost} model tokens (prompt + generation + scoring), over {limit}"
    errors: list[dict[str, Any]] = []
    for field, label in (("candidates", "candidates"), ("max_tokens", "max_tokens")):
        current = getattr(shape, field)
        if cost - auction_cost(_with(shape, field, 1)).total >= _NAMED_SHARE * cost:
            fits = _largest_fitting(shape, field, 1, current, limit)
            hint = f"; {label} ≤ {fits} would fit" if fits >= 1 else ""
            errors.append(_cost_error(field, f"{head}: {label} = {current}{hint}", limit, cost, fits=fits))
    count = len(shape.advertiser_prompts)
    if count and cost - auction_cost(_fewer_advertisers(shape, 0)).total >= _NAMED_SHARE * cost:
        fits = max(
            (k for k in range(count + 1) if auction_cost(_fewer_advertisers(shape, k)).total <= limit),
            default=-1,
        )
        hint = f"; at most {fits} advertisers would fit" if fits >= 0 else ""
        message = f"{head}: {count} advertisers{hint}"
        errors.append(_cost_error("advertisers", message, limit, cost, fits=fits))
    query_bytes = len(request.query.encode("utf-8"))
    prompts = 1 + count + (1 if shape.proposal == "mixture" else 0)
    if query_bytes * prompts * shape.candidates >= _NAMED_SHARE * cost:
        message = f"{head}: the query ({query_bytes} bytes) is in every one of the {prompts} scored prompts"
        errors.append(_cost_error("query", message, limit, cost))
    if shape.proposal == "mixture" and cost - auction_cost(replace(shape, proposal="context")).total >= (
        _NAMED_SHARE * cost
    ):
        errors.append(_cost_error("proposal", f"{head}: the mixture scores one more context", limit, cost))
    return errors or [_cost_error("candidates", head, limit, cost)]


def enforce_cost_limit(request: AuctionRequest, settings: Settings, workers: int) -> int:
    """The auction's cost bound; `LimitExceededError` (422 naming the fields that make it big, with the
    cost and the limit) when it exceeds what one auction may ever be admitted with."""
    shape = request_shape(request, settings, workers)
    cost = auction_cost(shape).total
    limit = max_auction_cost(settings)
    if cost > limit:
        raise LimitExceededError(_field_errors(shape, request, cost, limit))
    return cost
