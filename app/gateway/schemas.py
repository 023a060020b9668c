"""Request and response models of the gateway's HTTP API, and the limits enforced on them.

Static bounds live on the fields; the limits that are settings (query length, advertisers, M,
max_tokens, ...) are checked by `enforce_limits` before any model work, answered 422 naming the field.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from app.prompts import AdvertiserProfile, advertiser_messages, context_messages, reference_messages
from app.settings import Settings

ProposalName = Literal["context", "reference", "mixture"]

MAX_SEED = 2**53 - 1


def _integral_number(value: Any) -> Any:
    # JSON has one number type: 2.0 is the integer 2 (JSON Schema counts it as "integer" too). Strict
    # still refuses 2.5, true and "2".
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


_AS_INT = BeforeValidator(_integral_number)  # last in Annotated, so the bounds stay in the schema

ADVERTISER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"


class AdvertiserIn(BaseModel):
    # strict: JSON types as they are (no true → 1, no "2" → 2, no "yes" → True).
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, strict=True)

    id: str = Field(
        pattern=ADVERTISER_ID_PATTERN,
        description="Stable account id (letters, digits, '_', '.', '-'; at most 64).",
        examples=["strummaster"],
    )
    name: str = Field(min_length=1, description="Name the reply may mention.", examples=["StrumMaster"])
    description: str = Field(
        min_length=1,
        description="What the advertiser offers, in a few words.",
        examples=["selling guitars, tuners, and learning materials for beginners"],
    )
    instruction: str | None = Field(
        None,
        min_length=1,
        description="System prompt defining the advertiser's LLM π_i; default: "
        "'Answer the question advertising <name>, <description>.'",
    )
    value_scale: float = Field(
        1.0, gt=0, le=1e3, allow_inf_nan=False, description="s_i: money per nat of log-likelihood ratio."
    )

    @model_validator(mode="after")
    def _renders(self) -> AdvertiserIn:
        # The prompts neutralise template control sequences; text with nothing left is refused here
        # (422) rather than failing later inside the auction.
        profile = AdvertiserProfile(
            name=self.name, description=self.description, instruction=self.instruction
        )
        advertiser_messages("query", profile)
        context_messages("query", [profile])
        return self


class AuctionRequest(BaseModel):
    # strict: JSON types as they are (no true → 1, no "2" → 2, no "yes" → True). The schema also says
    # the one cross-field rule (`_mixture_needs_raw_sampling`): mixture only at temperature 1, top_p 1.
    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        strict=True,
        json_schema_extra={
            "anyOf": [
                {"not": {"properties": {"proposal": {"const": "mixture"}}, "required": ["proposal"]}},
                {"properties": {"temperature": {"const": 1}, "top_p": {"const": 1}}},
            ]
        },
    )

    query: str = Field(
        min_length=1, description="The user's query.", examples=["Learning to play the guitar."]
    )
    advertisers: list[AdvertiserIn] = Field(
        min_length=1,
        description="The advertisers in this auction (ids unique).",
        json_schema_extra={"uniqueItems": True},
    )
    tau: float | None = Field(
        None,
        ge=0.01,
        le=1e6,
        allow_inf_nan=False,
        description="Weight on the user (τ). Default: 1 for ≤ 2 advertisers, n/2 above (the paper).",
    )
    candidates: Annotated[int, Field(ge=1), _AS_INT] | None = Field(
        None, description="M, the number of candidate replies."
    )
    proposal: ProposalName = Field("context", description="Where candidates are drawn from.")
    max_tokens: Annotated[int, Field(ge=1), _AS_INT] | None = Field(
        None, description="Longest reply, in tokens."
    )
    temperature: float = Field(1.0, gt=0, le=2, allow_inf_nan=False, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False, description="Nucleus sampling mass.")
    # At most 2^53 - 1: JSON numbers beyond it are not interoperable (RFC 8259 §6; a JavaScript client
    # would round a 63-bit seed and could never replay the auction).
    seed: Annotated[int, Field(ge=0, le=MAX_SEED), _AS_INT] | None = Field(
        None, description="Seed (0 … 2^53 − 1): the same seed replays the auction."
    )
    include_candidates: bool = Field(False, description="Return the candidate table (for audits).")

    @field_validator("query")
    @classmethod
    def _query_renders(cls, query: str) -> str:
        reference_messages(query)
        return query

    @field_validator("advertisers")
    @classmethod
    def _unique_ids(cls, advertisers: list[AdvertiserIn]) -> list[AdvertiserIn]:
        seen: set[str] = set()
        for advertiser in advertisers:
            if advertiser.id in seen:
                raise ValueError(f"advertiser ids must be unique; '{advertiser.id}' appears twice")
            seen.add(advertiser.id)
        return advertisers

    @model_validator(mode="after")
    def _mixture_needs_raw_sampling(self) -> AuctionRequest:
        # The mixture's log q needs every candidate's probability under BOTH proposals; scoring gives
        # temperature-1 log-probs only, so a processed (tempered / top-p) mixture density is unavailable.
        if self.proposal == "mixture" and (self.temperature != 1.0 or self.top_p != 1.0):
            raise ValueError("proposal 'mixture' requires temperature 1 and top_p 1")
        return self


class AdvertiserResult(BaseModel):
    id: str
    payment: float = Field(description="p_i = R_i − U_i, charged (expected, not realised).")
    expected_reward: float = Field(description="R_i = Σ_j π_j r_i(y_j).")
    expected_utility: float = Field(description="U_i = τ LSE(ℓ) − τ LSE(β_{-i}).")


class CandidateRecord(BaseModel):
    text: str
    log_ref: float = Field(description="log π_ref(y_j | x).")
    log_proposal: float = Field(description="log q(y_j), the density it was drawn from.")
    rewards: dict[str, float] = Field(description="r_i(y_j) by advertiser id.")
    probability: float = Field(description="π_j, the allocation probability.")
    proposal: Literal["context", "reference"] = Field(description="Which proposal drew it.")
    num_tokens: int
    finish_reason: str | None


class AuctionTimings(BaseModel):
    tokenize: float
    generate: float
    score: float
    mechanism: float
    billing: float
    total: float
    workers: float = Field(description="Wall time with at least one worker request in flight.")


class AuctionResponse(BaseModel):
    auction_id: str
    reply: str
    chosen_index: int
    tau: float
    proposal: ProposalName
    seed: int = Field(description="The seed used (drawn when the request gave none).")
    currency: str
    advertisers: list[AdvertiserResult]
    revenue: float
    effective_sample_size: float
    timings_ms: AuctionTimings
    candidates: list[CandidateRecord] | None = None


class AuctionRecord(AuctionResponse):
    """What GET /auctions/{id} returns: the full response, candidates included, plus the request."""

    request: dict[str, Any]
    created_at_ms: int
    payments_micro: dict[str, int]


def _limit_error(loc: tuple[str | int, ...], message: str, limit: int) -> dict[str, Any]:
    return {
        "type": "limit_exceeded",
        "loc": ("body", *loc),
        "msg": message,
        "input": None,
        "ctx": {"limit": limit},
    }


# NFKC lengthens a code point at most this much (U+FDFA; Unicode's stability policy fixes existing
# decompositions, and tests/unit/test_prompt_limits.py recomputes the bound over every code point). So the
# character gate on the text as sent bounds the text the workers tokenize to this times the limit.
NFKC_MAX_EXPANSION = 18


def nfkc_length(text: str) -> int:
    """Code points of `text` after NFKC, the form the prompts are built from (one U+FDFA is 18)."""
    return len(unicodedata.normalize("NFKC", text))


def limit_schema_overrides(settings: Settings) -> dict[str, dict[str, dict[str, int]]]:
    """JSON-schema bounds of the limits `enforce_limits` checks, for the OpenAPI document.

    Lengths are code points of the text as sent, exactly what `enforce_limits` counts (the token limit,
    MAX_PROMPT_TOKENS, cannot be stated in JSON Schema).
    """
    return {
        "AuctionRequest": {
            "query": {"maxLength": settings.max_query_chars},
            "advertisers": {"maxItems": settings.max_advertisers},
            "candidates": {"maximum": settings.max_candidates},
            "max_tokens": {"maximum": settings.max_tokens_limit},
        },
        "AdvertiserIn": {
            "name": {"maxLength": settings.max_name_chars},
            "description": {"maxLength": settings.max_description_chars},
            "instruction": {"maxLength": settings.max_instruction_chars},
        },
    }


def enforce_limits(request: AuctionRequest, settings: Settings) -> None:
    """Raise 422 (FastAPI's validation shape) naming every field over a configured limit.

    Character limits count code points as sent, the bound the OpenAPI document states (a schema cannot
    state a length after NFKC, so counting that would refuse schema-valid text such as `¼`). They are
    only the cheap first gate: NFKC lengthens text at most NFKC_MAX_EXPANSION times, and the cost is
    tokens, checked on every rendered prompt by `app.auction.sampler.check_prompt_lengths` before any
    generation (a query of U+FDFA is refused there, naming `query`).
    """
    errors: list[dict[str, Any]] = []
    if len(request.query) > settings.max_query_chars:
        errors.append(
            _limit_error(
                ("query",),
                f"query longer than {settings.max_query_chars} characters",
                settings.max_query_chars,
            )
        )
    if len(request.advertisers) > settings.max_advertisers:
        errors.append(
            _limit_error(
                ("advertisers",),
                f"more than {settings.max_advertisers} advertisers",
                settings.max_advertisers,
            )
        )
    for index, advertiser in enumerate(request.advertisers):
        for field, limit in (
            ("name", settings.max_name_chars),
            ("description", settings.max_description_chars),
            ("instruction", settings.max_instruction_chars),
        ):
            value = getattr(advertiser, field)
            if value is not None and len(value) > limit:
                errors.append(
                    _limit_error(
                        ("advertisers", index, field),
                        f"{field} longer than {limit} characters",
                        limit,
                    )
                )
    if request.candidates is not None and request.candidates > settings.max_candidates:
        errors.append(
            _limit_error(
                ("candidates",),
                f"candidates above the limit {settings.max_candidates}",
                settings.max_candidates,
            )
        )
    if request.max_tokens is not None and request.max_tokens > settings.max_tokens_limit:
        errors.append(
            _limit_error(
                ("max_tokens",),
                f"max_tokens above the limit {settings.max_tokens_limit}",
                settings.max_tokens_limit,
            )
        )
    if errors:
        raise RequestValidationError(errors)


class ErrorMessage(BaseModel):
    """Every 4xx/5xx answer but 422: one message naming the cause."""

    detail: str = Field(description="What went wrong, naming the cause.")


class FieldError(BaseModel):
    type: str = Field(description="Machine-readable kind, e.g. `limit_exceeded`, `json_invalid`.")
    loc: list[str | int] = Field(description="Where: `body` then the JSON path of the field.")
    msg: str
    input: Any = Field(None, description="The offending value, when it can be written back as JSON.")
    ctx: dict[str, Any] | None = None


class ValidationErrorBody(BaseModel):
    """422 (and 413): the request was refused before any model work; each entry names a field."""

    detail: list[FieldError]


def _error_model(status: int) -> type[BaseModel]:
    return ValidationErrorBody if status in (413, 422) else ErrorMessage


def error_component_schemas() -> dict[str, Any]:
    """The JSON schemas `error_responses` refers to, for the OpenAPI document's components."""
    schema = ValidationErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    components: dict[str, Any] = schema.pop("$defs", {})
    components["ValidationErrorBody"] = schema
    components["ErrorMessage"] = ErrorMessage.model_json_schema(ref_template="#/components/schemas/{model}")
    return components


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these statuses, each with its JSON body schema.

    Written as explicit `application/json` content (not `model=`): FastAPI would otherwise document
    the body under the route's own media type, e.g. text/plain for /metrics.
    """
    descriptions = {
        401: "Missing or invalid API key",
        403: "The key's scope does not allow this (an advertiser key)",
        404: "Not found",
        413: "Request body over MAX_BODY_BYTES; names `body` (nothing billed)",
        422: "Invalid input or over a limit; names the field (nothing billed)",
        429: "Over an admission limit (concurrency, per-key, worker tokens); retry after `Retry-After` "
        "seconds (refused before any model work, nothing billed)",
        500: "Internal error, naming its cause (nothing billed)",
        502: "A worker refused the request (nothing billed)",
        503: "Workers, Redis or the billing ledger unavailable (nothing billed)",
        504: "Auction deadline passed (nothing billed)",
    }

    def name(status: int) -> str:
        return _error_model(status).__name__

    retry_after = {
        "Retry-After": {
            "description": "Seconds to wait before retrying",
            "schema": {"type": "integer", "minimum": 1},
        }
    }
    return {
        status: {
            "description": descriptions[status],
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name(status)}"}}},
            **({"headers": retry_after} if status == 429 else {}),
        }
        for status in statuses
    }
