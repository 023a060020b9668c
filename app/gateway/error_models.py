"""The error bodies of the HTTP API and their OpenAPI documentation (`error_responses`).

Every 4xx/5xx answer but 413/422 is an `ErrorMessage` naming the cause; 413 and 422 are a
`ValidationErrorBody` whose entries name the field. Imports pydantic only.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


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
        409: "Conflict, naming its cause (nothing billed): the Idempotency-Key's first request is still "
        "running; the auction cannot be rendered (a test auction); or a what-if names an advertiser the "
        "auction did not have (the field is named)",
        410: "The pending charge's render window passed: expired, never billed",
        422: "Invalid input or over a limit; names the field (nothing billed); also an Idempotency-Key "
        "reused with different parameters",
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
