"""The gateway's OpenAPI document as the server enforces it (what a client, or a fuzzer, may rely on).

FastAPI writes the document from the models; this adds what the models cannot say by themselves:
the error bodies the routes refer to (`schemas.error_responses`), the request limits that are
settings (`schemas.limit_schema_overrides`), and which text survives sanitising
(`text_schema.text_patterns`). Imports the gateway's schemas and text patterns, and the settings.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from app.gateway.schemas import error_component_schemas, limit_schema_overrides
from app.gateway.text_schema import text_patterns
from app.settings import Settings


def _typed_branches(prop: dict[str, Any]) -> list[dict[str, Any]]:
    """An optional field is anyOf [its type, null]: bounds and patterns go on the typed branch."""
    return [branch for branch in prop.get("anyOf", [prop]) if branch.get("type") != "null"]


TEXT_FIELDS = (
    ("AuctionRequest", "query", "text"),
    ("AdvertiserIn", "name", "text"),
    ("AdvertiserIn", "description", "description"),
    ("AdvertiserIn", "instruction", "text"),
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
