"""The error bodies of the HTTP API: `ErrorMessage`, and `ValidationErrorBody` of `FieldError`s.

Every 4xx/5xx answer but 413/422 is an `ErrorMessage` naming the cause; 413 and 422 are a
`ValidationErrorBody` whose entries name the field (their OpenAPI documentation, `error_responses`,
is the gateway's). Imports pydantic only; see docs/DESIGN.md § Layout.
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


def error_component_schemas() -> dict[str, Any]:
    """The JSON schemas of the error bodies, for the OpenAPI document's components."""
    schema = ValidationErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    components: dict[str, Any] = schema.pop("$defs", {})
    components["ValidationErrorBody"] = schema
    components["ErrorMessage"] = ErrorMessage.model_json_schema(ref_template="#/components/schemas/{model}")
    return components
