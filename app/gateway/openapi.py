"""The gateway's OpenAPI document as the server enforces it (what a client, or a fuzzer, may rely on).

FastAPI writes the document from the models; this adds what the models cannot say by themselves:
the error bodies the routes refer to (`error_responses`, bodies `app.contract.errors`), the request
limits that are settings (`app.contract.limits.limit_schema_overrides`), and which text survives
sanitising (`text_schema.text_patterns`). Imports FastAPI, the contract, the gateway's text patterns
and the settings; see docs/DESIGN.md § Layout.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from app.contract.errors import ErrorMessage, ValidationErrorBody, error_component_schemas
from app.contract.limits import limit_schema_overrides
from app.gateway.text_schema import text_patterns
from app.settings import Settings

ERROR_DESCRIPTIONS = {
    401: "Missing or invalid API key",
    403: "The key's scope does not allow this (an advertiser key)",
    404: "Not found",
    413: "Request body over MAX_BODY_BYTES; names `body` (nothing billed)",
    409: "Conflict, naming its cause (nothing billed): the Idempotency-Key's first request is still "
    "running; the auction cannot be rendered (a test auction); or a what-if names an advertiser the "
    "auction did not have (the field is named); a campaign id already taken, or a change to an "
    "archived campaign; an auction not yet covered by a signed tree head (retry after `Retry-After`)",
    412: "If-Match does not name the current version (a lost update refused); the ETag header is it",
    428: "This change needs an If-Match header naming the version it was made from",
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


def _retry_after_header() -> dict[str, Any]:
    return {
        "Retry-After": {
            "description": "Seconds to wait before retrying",
            "schema": {"type": "integer", "minimum": 1},
        }
    }


def _error_model_name(status: int) -> str:
    return (ValidationErrorBody if status in (413, 422) else ErrorMessage).__name__


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these statuses, each with its JSON body schema.

    Written as explicit `application/json` content (not `model=`): FastAPI would otherwise document
    the body under the route's own media type, e.g. text/plain for /metrics.
    """
    return {
        status: {
            "description": ERROR_DESCRIPTIONS[status],
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{_error_model_name(status)}"}}
            },
            **({"headers": _retry_after_header()} if status == 429 else {}),
        }
        for status in statuses
    }


TEXT_FIELDS = (
    ("AuctionRequest", "query", "text"),
    ("AdvertiserIn", "name", "text"),
    ("AdvertiserIn", "description", "description"),
    ("AdvertiserIn", "instruction", "text"),
    *(
        (model, field, kind)
        for model in ("CampaignCreate", "CampaignPatch")
        for field, kind in (("name", "text"), ("description", "description"), ("instruction", "text"))
    ),
)


def document_schemas(app: FastAPI, settings: Settings) -> None:
    """The OpenAPI document as this server enforces it: the error bodies routes refer to
    (`error_responses`), and the request limits that are settings (`limit_schema_overrides`)."""
    build_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build_openapi()
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(error_component_schemas())
            patterns = text_patterns()
            for model, field, kind in TEXT_FIELDS:
                for branch in schemas[model]["properties"][field].get(
                    "anyOf", [schemas[model]["properties"][field]]
                ):
                    if branch.get("type") == "string":
                        branch["pattern"] = patterns[kind]
            for model, fields in limit_schema_overrides(settings).items():
                for field, bounds in fields.items():
                    target = schemas[model]["properties"][field]
                    # Optional fields are anyOf [the type, null]: the bound goes on the typed branch.
                    for branch in target.get("anyOf", [target]):
                        if branch.get("type") != "null":
                            branch.update(bounds)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
