"""The request limits that are settings (query length, advertisers, M, max_tokens, tmax_ms, ...).

`enforce_limits` checks them before any model work and raises `LimitExceededError` carrying one
pydantic-shaped error per field over its limit (the gateway answers it 422, as a validation error);
`limit_schema_overrides` states the same bounds for the OpenAPI document. Imports `app.settings` and
`app.contract.request` only; see docs/DESIGN.md § Layout.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from app.contract.campaign import CampaignCreate, CampaignPatch
from app.contract.request import AdvertiserIn, AuctionRequest
from app.settings import Settings

# NFKC lengthens a code point at most this much (U+FDFA; Unicode's stability policy fixes existing
# decompositions, and tests/unit/test_prompt_limits.py recomputes the bound over every code point). So the
# character gate on the text as sent bounds the text the workers tokenize to this times the limit.
NFKC_MAX_EXPANSION = 18

ADVERTISER_TEXT_FIELDS = ("name", "description", "instruction")


class LimitExceededError(Exception):
    """Fields over a configured limit; `errors` in the shape of a validation error's entries
    (`type`, `loc` from ``body``, `msg`, `input`, `ctx.limit`)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(str(error["msg"]) for error in errors))
        self.errors = errors


def nfkc_length(text: str) -> int:
    """Code points of `text` after NFKC, the form the prompts are built from (one U+FDFA is 18)."""
    return len(unicodedata.normalize("NFKC", text))


def max_tmax_ms(settings: Settings) -> int:
    """The largest `tmax_ms` a request may give: AUCTION_DEADLINE_S in whole milliseconds."""
    return int(settings.auction_deadline_s * 1000)


def _advertiser_text_limits(settings: Settings) -> dict[str, int]:
    return {
        "name": settings.max_name_chars,
        "description": settings.max_description_chars,
        "instruction": settings.max_instruction_chars,
    }


def limit_schema_overrides(settings: Settings) -> dict[str, dict[str, dict[str, int]]]:
    """JSON-schema bounds of the limits `enforce_limits` checks, for the OpenAPI document.

    Lengths are code points of the text as sent, exactly what `enforce_limits` counts (the token limit,
    MAX_PROMPT_TOKENS, cannot be stated in JSON Schema).
    """
    return {
        "AuctionRequest": {
            "query": {"maxLength": settings.max_query_chars},
            "advertisers": {"maxItems": settings.max_advertisers},
            "campaigns": {"maxItems": settings.max_advertisers},
            "candidates": {"maximum": settings.max_candidates},
            "max_tokens": {"maximum": settings.max_tokens_limit},
            "tmax_ms": {"maximum": max_tmax_ms(settings)},
        },
        "SelectionIn": {"max": {"maximum": settings.max_advertisers}},
        **{
            model: {field: {"maxLength": limit} for field, limit in _advertiser_text_limits(settings).items()}
            for model in ("AdvertiserIn", "CampaignCreate", "CampaignPatch")
        },
    }


def _limit_error(loc: tuple[str | int, ...], message: str, limit: int) -> dict[str, Any]:
    return {
        "type": "limit_exceeded",
        "loc": ("body", *loc),
        "msg": message,
        "input": None,
        "ctx": {"limit": limit},
    }


def _request_errors(request: AuctionRequest, settings: Settings) -> list[dict[str, Any]]:
    """The query's length and the number of advertisers."""
    errors: list[dict[str, Any]] = []
    if len(request.query) > settings.max_query_chars:
        message = f"query longer than {settings.max_query_chars} characters"
        errors.append(_limit_error(("query",), message, settings.max_query_chars))
    if len(request.advertisers) > settings.max_advertisers:
        message = f"more than {settings.max_advertisers} advertisers"
        errors.append(_limit_error(("advertisers",), message, settings.max_advertisers))
    elif len(request.advertisers) + len(request.campaigns) > settings.max_advertisers:
        message = f"more than {settings.max_advertisers} advertisers and campaigns together"
        errors.append(_limit_error(("campaigns",), message, settings.max_advertisers))
    elif (
        request.select is not None
        and len(request.advertisers) + request.select.max > settings.max_advertisers
    ):
        message = f"select.max and the inline advertisers together above {settings.max_advertisers}"
        errors.append(_limit_error(("select", "max"), message, settings.max_advertisers))
    return errors


def _advertiser_errors(advertisers: list[AdvertiserIn], settings: Settings) -> list[dict[str, Any]]:
    """Each advertiser's name, description and instruction lengths."""
    errors: list[dict[str, Any]] = []
    limits = _advertiser_text_limits(settings)
    for index, advertiser in enumerate(advertisers):
        for field in ADVERTISER_TEXT_FIELDS:
            value, limit = getattr(advertiser, field), limits[field]
            if value is not None and len(value) > limit:
                message = f"{field} longer than {limit} characters"
                errors.append(_limit_error(("advertisers", index, field), message, limit))
    return errors


def _work_errors(request: AuctionRequest, settings: Settings) -> list[dict[str, Any]]:
    """M, the reply length and the auction's own deadline."""
    errors: list[dict[str, Any]] = []
    if request.candidates is not None and request.candidates > settings.max_candidates:
        message = f"candidates above the limit {settings.max_candidates}"
        errors.append(_limit_error(("candidates",), message, settings.max_candidates))
    if request.max_tokens is not None and request.max_tokens > settings.max_tokens_limit:
        message = f"max_tokens above the limit {settings.max_tokens_limit}"
        errors.append(_limit_error(("max_tokens",), message, settings.max_tokens_limit))
    if request.tmax_ms is not None and request.tmax_ms > max_tmax_ms(settings):
        message = f"tmax_ms above AUCTION_DEADLINE_S ({max_tmax_ms(settings)} ms)"
        errors.append(_limit_error(("tmax_ms",), message, max_tmax_ms(settings)))
    return errors


def enforce_limits(request: AuctionRequest, settings: Settings) -> None:
    """Raise `LimitExceededError` naming every field over a configured limit (the gateway: 422).

    Character limits count code points as sent, the bound the OpenAPI document states (a schema cannot
    state a length after NFKC, so counting that would refuse schema-valid text such as `¼`). They are
    only the cheap first gate: NFKC lengthens text at most NFKC_MAX_EXPANSION times, and the cost is
    tokens, checked on every rendered prompt by `app.auction.sampler.check_prompt_lengths` before any
    generation (a query of U+FDFA is refused there, naming `query`).
    """
    errors = [
        *_request_errors(request, settings),
        *_advertiser_errors(request.advertisers, settings),
        *_work_errors(request, settings),
    ]
    if errors:
        raise LimitExceededError(errors)


def enforce_campaign_limits(body: CampaignCreate | CampaignPatch, settings: Settings) -> None:
    """Raise `LimitExceededError` for a campaign's name, description or instruction over the limits
    an inline advertiser has (MAX_NAME_CHARS, ...): a campaign's texts become the same prompts."""
    errors = []
    for field, limit in _advertiser_text_limits(settings).items():
        value = getattr(body, field)
        if value is not None and len(value) > limit:
            errors.append(_limit_error((field,), f"{field} longer than {limit} characters", limit))
    if errors:
        raise LimitExceededError(errors)
