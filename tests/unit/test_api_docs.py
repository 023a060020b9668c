"""The OpenAPI document and the documentation pages, read from the app (no server, no network).

Invariants: every operation has a readable operationId (`run_auction`, not `run_auction_auction_post`);
the bearer scheme is declared and every keyed route names it (Swagger's Authorize); every request
example validates against its model and the limits (the defaults and the fuzz test's small ones) and
holds only JSON-safe integers (≤ 2^53 − 1); /docs, /redoc and the explorer reference local assets only,
and those assets are in the package.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.contract.limits import enforce_limits
from app.contract.request import MAX_SEED, AuctionRequest
from app.contract.whatif import WhatIfRequest
from app.gateway.app import create_app
from app.settings import Settings

FUZZ_LIMITS = {
    "max_candidates": 3,
    "max_tokens_limit": 4,
    "max_advertisers": 2,
    "max_query_chars": 100,
    "max_name_chars": 20,
    "max_description_chars": 60,
    "max_instruction_chars": 60,
}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return create_app(Settings(api_keys=["docs-test-key-1"])).openapi()


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield path, method, operation


def test_operation_ids_are_the_function_names(document: dict[str, Any]) -> None:
    ids = {(method, path): op["operationId"] for path, method, op in _operations(document)}
    assert ids[("post", "/auction")] == "run_auction"
    assert ids[("get", "/auctions/{auction_id}")] == "get_auction"
    assert ids[("post", "/auctions/{auction_id}/resolve")] == "resolve_auction"
    assert ids[("get", "/auctions/{auction_id}/why")] == "explain_auction"
    assert len(set(ids.values())) == len(ids)
    assert all(re.fullmatch(r"[a-z][a-z_]*", name) for name in ids.values()), ids


def test_the_bearer_scheme_is_declared_and_used(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert {scheme["type"]: scheme["scheme"] for scheme in schemes.values()} == {"http": "bearer"}
    keyed = {
        path
        for path, _, op in _operations(document)
        if any(set(s) & set(schemes) for s in op.get("security", []))
    }
    assert {
        "/auction",
        "/auctions/{auction_id}",
        "/auctions/{auction_id}/resolve",
        "/auctions/{auction_id}/why",
        "/ledger/summary",
    } <= keyed
    assert "/healthz" not in keyed


def _integers(value: Any) -> Iterator[int]:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _integers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _integers(item)


def _body_examples(document: dict[str, Any], path: str) -> list[Any]:
    content = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    return [example["value"] for example in content["examples"].values()]


@pytest.mark.parametrize("limits", [{}, FUZZ_LIMITS], ids=["default-limits", "fuzz-limits"])
def test_a_body_of_the_field_examples_validates(document: dict[str, Any], limits: dict[str, int]) -> None:
    """Swagger's "Try it out" body is built from the fields' examples (else their bounds: seed = its
    maximum, 2^53 − 1, JSON-safe); no whole-body example: schemathesis' fuzzing phase then fails its
    too-slow health check on POST /auction. The browser test executes Swagger's default body (200)."""
    schemas = document["components"]["schemas"]
    request, advertiser = schemas["AuctionRequest"]["properties"], schemas["AdvertiserIn"]["properties"]
    body = {
        "query": request["query"]["examples"][0],
        "advertisers": [{field: advertiser[field]["examples"][0] for field in ("id", "name", "description")}],
    }
    settings = Settings(**limits)  # type: ignore[arg-type]
    body["advertisers"][0]["description"] = body["advertisers"][0]["description"][
        : settings.max_description_chars
    ]
    enforce_limits(AuctionRequest.model_validate(body), settings)
    assert all(abs(number) <= MAX_SEED for number in _integers(document)), "an integer beyond 2^53 - 1"


def test_whatif_examples_validate(document: dict[str, Any]) -> None:
    examples = _body_examples(document, "/auctions/{auction_id}/resolve")
    schema = document["components"]["schemas"]["WhatIfRequest"]
    for example in [*examples, *schema.get("examples", [])]:
        WhatIfRequest.model_validate(example)


def test_the_seed_bound_is_json_safe(document: dict[str, Any]) -> None:
    seed = document["components"]["schemas"]["AuctionRequest"]["properties"]["seed"]
    bounds = [
        branch.get("maximum") for branch in seed.get("anyOf", [seed]) if branch.get("type") == "integer"
    ]
    assert bounds == [2**53 - 1]


@pytest.fixture(scope="module")
def pages() -> TestClient:
    # Without `with`: the lifespan (model, Redis) does not run; these routes need none of it.
    return TestClient(create_app(Settings()))


def _local_references(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html) + re.findall(
        r"""url:\s*['"]([^'"]+)['"]""", html
    )


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/"])
def test_pages_reference_only_local_assets(pages: TestClient, path: str) -> None:
    response = pages.get(path)
    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]
    references = _local_references(response.text)
    assert references, response.text[:500]
    for reference in references:
        if reference.startswith("data:"):
            continue
        assert reference.startswith("/") and not reference.startswith("//"), reference
        if reference != "/openapi.json" and not reference.startswith("/docs"):
            asset = pages.get(reference.split("?")[0])
            assert asset.status_code == 200, reference
    assert "fonts.googleapis" not in response.text and "cdn." not in response.text


def test_the_explorer_page_and_its_assets(pages: TestClient) -> None:
    page = pages.get("/")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/explorer/app.js", "/explorer/style.css", "/explorer/instances.json"):
        assert pages.get(asset).status_code == 200, asset
    instances = pages.get("/explorer/instances.json").json()["instances"]
    assert len(instances) >= 3
    for instance in instances:
        AuctionRequest.model_validate({"query": instance["query"], "advertisers": instance["advertisers"]})
    script = pages.get("/explorer/app.js").text
    assert "innerHTML" not in script  # every API text goes in as textContent
    assert not re.search(r"https?://", script)
