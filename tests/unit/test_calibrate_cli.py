"""`mosaic calibrate`'s inputs: the advertiser file, the query sample, a campaign read through
`GET /campaigns/{id}` (a fake transport: the route is another helper's), and refusals (exit 2)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.cli_calibrate import DEFAULT_SAMPLE, campaign_advertiser, load_advertiser, load_queries
from mosaic_client import AsyncMosaicClient, NotFoundError


def test_the_default_sample_is_the_papers_instances() -> None:
    """No --queries: the explorer's instances, with their advertisers as optional competitors."""
    queries = load_queries(None)
    instances = json.loads(DEFAULT_SAMPLE.read_text())["instances"]
    assert [q.query for q in queries] == [i["query"] for i in instances]
    assert queries[0].competitors == instances[0]["advertisers"]


def test_query_files_json_lines_and_lists(tmp_path: Path) -> None:
    lines = tmp_path / "q.jsonl"
    lines.write_text('"first query"\n{"query": "second", "advertisers": [{"id": "x"}]}\n')
    assert [(q.query, q.competitors) for q in load_queries(lines)] == [
        ("first query", []),
        ("second", [{"id": "x"}]),
    ]
    listed = tmp_path / "q.json"
    listed.write_text(json.dumps(["a", "b"]))
    assert [q.query for q in load_queries(listed)] == ["a", "b"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"text": "no query"}]))
    with pytest.raises(ValueError, match="entry 0"):
        load_queries(bad)


def test_the_advertiser_file_is_validated_as_an_advertiser(tmp_path: Path) -> None:
    good = tmp_path / "a.json"
    good.write_text(json.dumps({"name": "N", "description": "d", "value_scale": 0.2}))
    assert load_advertiser(good) == {"id": "advertiser", "name": "N", "description": "d", "value_scale": 0.2}
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps({"name": "N", "description": "d", "value_scale": 0}))
    with pytest.raises(ValueError, match="value_scale"):
        load_advertiser(bad)


def test_a_campaign_is_read_as_its_owners_advertiser() -> None:
    """GET /campaigns/{id}: the advertiser is the owner, with the campaign's texts and value scale."""
    campaign = {
        "id": "spring",
        "owner": "strummaster",
        "name": "StrumMaster",
        "description": "guitars",
        "instruction": "Mention StrumMaster.",
        "value_scale": 0.25,
        "status": "active",
    }

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/campaigns/spring" and request.headers["authorization"] == "Bearer k":
            return httpx.Response(200, json=campaign)
        return httpx.Response(404, json={"detail": "campaign 'other' not found"})

    async def read(campaign_id: str) -> dict[str, object]:
        async with AsyncMosaicClient(
            "http://fake", api_key="k", transport=httpx.MockTransport(handler)
        ) as client:
            return await campaign_advertiser(client, campaign_id)

    assert asyncio.run(read("spring")) == {
        "id": "strummaster",
        "name": "StrumMaster",
        "description": "guitars",
        "instruction": "Mention StrumMaster.",
        "value_scale": 0.25,
    }
    with pytest.raises(NotFoundError):
        asyncio.run(read("other"))


def test_refusals_exit_2(tmp_path: Path) -> None:
    """Neither or both of --advertiser-json and --campaign, a bad file, a target under one micro-unit."""
    both = CliRunner().invoke(cli, ["calibrate"])
    assert both.exit_code == 2 and "exactly one of" in both.output
    advertiser = tmp_path / "a.json"
    advertiser.write_text(json.dumps({"name": "N", "description": "d"}))
    tiny = CliRunner().invoke(
        cli, ["calibrate", "--advertiser-json", str(advertiser), "--target-cpm", "1e-9"]
    )
    assert tiny.exit_code == 2 and "--target-cpm" in tiny.output
    missing = CliRunner().invoke(cli, ["calibrate", "--advertiser-json", str(tmp_path / "none.json")])
    assert missing.exit_code == 2 and "none.json" in missing.output
