"""`mosaic calibrate`: knowing what to bid — an advertiser's expected cost per auction and per 1,000
auctions at her value scale, on a sample of queries, and the value scale that meets a target.

One TEST auction per query through the gateway (`test: true`: run in full, never billed;
`include_candidates: true`), one progress line each, then `POST /calibration` on their candidate
tables (the mechanism's payments with her value scale changed: no more model work) and a table of
value scale → cost. The advertiser comes from a JSON file (`AdvertiserIn`'s fields) or from a
campaign (`GET /campaigns/{id}`: name, description, instruction, value_scale, owner). The default
sample is the explorer's: the paper's instances (app/explorer/static/instances.json); `--competitors`
puts each instance's advertisers in her auctions beside her (default: she is alone).
Part of the CLI: imports `app.cli_auction` (its gateway client: a URL or the app in process),
`mosaic_client`, `app.contract`, `app.ledger.events` (micro-units); nothing imports it but `app.cli`.
See docs/DESIGN.md § Layout.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from app.cli_auction import gateway_client
from app.contract.calibration import DEFAULT_VALUE_SCALES, CalibrationResponse
from app.contract.request import AdvertiserIn
from app.ledger.events import MICRO_UNITS_PER_UNIT, to_micro_units
from mosaic_client import AsyncMosaicClient, MosaicError

console = Console()

DEFAULT_SAMPLE = Path(__file__).parent / "explorer" / "static" / "instances.json"
DEFAULT_ADVERTISER_ID = "advertiser"


@dataclass(frozen=True)
class SampleQuery:
    query: str
    competitors: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class AuctionOptions:
    proposal: str = "context"
    candidates: int | None = None
    max_tokens: int | None = None
    tau: float | None = None
    seed: int | None = None
    competitors: bool = False


def load_advertiser(path: Path) -> dict[str, Any]:
    """An advertiser from a JSON object with `AdvertiserIn`'s fields (`id` optional); ValueError naming
    the file and the field when it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with name, description, value_scale, ...")
    data.setdefault("id", DEFAULT_ADVERTISER_ID)
    try:
        advertiser = AdvertiserIn.model_validate(data)
    except ValidationError as error:
        raise ValueError(f"{path}: {error}") from None
    return advertiser.model_dump(exclude_none=True)


def load_queries(path: Path | None) -> list[SampleQuery]:
    """The sample: a JSON list or `{"instances": [...]}`, or JSON Lines; each entry a query string or
    an object `{query, advertisers?}`. Default: the paper's instances (the explorer's)."""
    source = path or DEFAULT_SAMPLE
    try:
        text = source.read_text(encoding="utf-8")
        try:
            data: Any = json.loads(text)
        except json.JSONDecodeError:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{source}: {error}") from None
    entries = data.get("instances", []) if isinstance(data, dict) else data
    queries = []
    for index, entry in enumerate(entries if isinstance(entries, list) else []):
        if isinstance(entry, str) and entry.strip():
            queries.append(SampleQuery(entry.strip()))
        elif isinstance(entry, dict) and isinstance(entry.get("query"), str) and entry["query"].strip():
            queries.append(SampleQuery(entry["query"].strip(), list(entry.get("advertisers") or [])))
        else:
            raise ValueError(f"{source}: entry {index} is neither a query nor an object with a `query`")
    if not queries:
        raise ValueError(f"{source}: no queries")
    return queries


async def campaign_advertiser(client: AsyncMosaicClient, campaign_id: str) -> dict[str, Any]:
    """The campaign's advertiser (`GET /campaigns/{id}`): id = its owner, its texts and value scale."""
    campaign = await client._call("GET", f"/campaigns/{campaign_id}")
    advertiser = {
        "id": campaign["owner"],
        "name": campaign["name"],
        "description": campaign["description"],
        "value_scale": float(campaign["value_scale"]),
    }
    if campaign.get("instruction"):
        advertiser["instruction"] = campaign["instruction"]
    return advertiser


def _auction_fields(options: AuctionOptions, index: int) -> dict[str, Any]:
    fields: dict[str, Any] = {"proposal": options.proposal, "test": True, "include_candidates": True}
    for key in ("candidates", "max_tokens", "tau"):
        if getattr(options, key) is not None:
            fields[key] = getattr(options, key)
    if options.seed is not None:
        fields["seed"] = options.seed + index
    return fields


async def run_test_auctions(
    client: AsyncMosaicClient, advertiser: dict[str, Any], queries: list[SampleQuery], options: AuctionOptions
) -> list[dict[str, Any]]:
    """One test auction per query (never billed), a progress line each; their calibration tables."""
    tables = []
    for index, sample in enumerate(queries):
        others = (
            [a for a in sample.competitors if a.get("id") != advertiser["id"]] if options.competitors else []
        )
        started = time.monotonic()
        answer = await client.auction(sample.query, [advertiser, *others], **_auction_fields(options, index))
        payment = next(row.payment for row in answer.advertisers if row.id == advertiser["id"])
        console.print(
            f"[{index + 1}/{len(queries)}] {sample.query[:60]!r}: test auction {answer.auction_id} "
            f"(M={len(answer.candidates or [])}, τ={answer.tau:g}, {len(others)} other advertisers), "
            f"her payment {payment:.6f} {answer.currency}, {time.monotonic() - started:.1f} s",
            soft_wrap=True,  # one line per query, whatever the terminal's width
        )
        tables.append(
            {
                "tau": answer.tau,
                "value_scale": advertiser.get("value_scale", 1.0),
                "candidates": [c.model_dump(mode="json") for c in answer.candidates or []],
            }
        )
    return tables


async def calibrate(
    client: AsyncMosaicClient,
    advertiser_id: str,
    tables: list[dict[str, Any]],
    scales: list[float],
    target_micro: int | None,
) -> CalibrationResponse:
    body: dict[str, Any] = {"advertiser": advertiser_id, "auctions": tables, "value_scales": scales}
    if target_micro is not None:
        body["target_cpm_micro"] = target_micro
    return CalibrationResponse.model_validate(await client._call("POST", "/calibration", json=body))


def print_calibration(result: CalibrationResponse, own_scale: float) -> None:
    """The curve as a table (her own value scale marked), her cost now and the target's scale."""
    currency = result.currency
    table = Table(
        title=f"{result.advertiser}: expected cost over {result.auctions} test auctions "
        f"(proposal {', '.join(result.proposals) or '?'})"
    )
    for column in ("value scale", f"cost per auction ({currency})", f"cost per 1,000 ({currency})"):
        table.add_column(column, justify="right")
    for point in result.curve:
        mark = " ◀ yours" if point.value_scale == own_scale else ""
        table.add_row(
            f"{point.value_scale:g}{mark}", f"{point.cost_per_auction:.6f}", f"{point.cost_per_1000:.2f}"
        )
    console.print(table)
    own = next((p for p in result.curve if p.value_scale == own_scale), None)
    if own is not None:
        console.print(
            f"At your value scale {own_scale:g}: {own.cost_per_1000:.2f} {currency} per 1,000 auctions."
        )
    target = result.target
    if target is None:
        return
    wanted = target.target_cpm_micro / MICRO_UNITS_PER_UNIT
    got = target.cost_per_1000_micro / MICRO_UNITS_PER_UNIT
    if target.reached:
        console.print(
            f"Target {wanted:.2f} {currency} per 1,000: value scale {target.value_scale:.6g} "
            f"(costs {got:.6f} per 1,000)."
        )
    else:
        console.print(
            f"Target {wanted:.2f} {currency} per 1,000 is not reached: even the largest value scale "
            f"({target.value_scale:g}) costs {got:.6f} per 1,000 on these queries."
        )


async def _run(
    advertiser: dict[str, Any] | None,
    campaign: str | None,
    queries: list[SampleQuery],
    options: AuctionOptions,
    target_micro: int | None,
    connection: tuple[str | None, str | None, str | None],
) -> tuple[CalibrationResponse, float]:
    async with gateway_client(*connection) as client:
        if advertiser is None:
            assert campaign is not None
            advertiser = await campaign_advertiser(client, campaign)
        own_scale = float(advertiser.get("value_scale", 1.0))
        tables = await run_test_auctions(client, advertiser, queries, options)
        scales = sorted({*DEFAULT_VALUE_SCALES, own_scale})
        return await calibrate(client, advertiser["id"], tables, scales, target_micro), own_scale


def run_calibrate_command(
    *,
    advertiser_json: Path | None,
    campaign: str | None,
    queries: Path | None,
    limit: int | None,
    target_cpm: float | None,
    options: AuctionOptions,
    url: str | None,
    api_key: str | None,
    model: str | None,
) -> int:
    """`mosaic calibrate`; exit 0, 1 (the gateway refused or failed), 2 (bad input)."""
    try:
        if (advertiser_json is None) == (campaign is None):
            raise ValueError("give exactly one of --advertiser-json FILE and --campaign ID")
        advertiser = load_advertiser(advertiser_json) if advertiser_json is not None else None
        sample = load_queries(queries)[:limit] if limit else load_queries(queries)
        target_micro = None if target_cpm is None else to_micro_units(target_cpm)
        if target_micro is not None and target_micro < 1:
            raise ValueError(f"--target-cpm must be at least one micro-unit, got {target_cpm!r}")
    except ValueError as error:
        console.print(f"[red]{error}[/red]")
        return 2
    try:
        result, own_scale = asyncio.run(
            _run(advertiser, campaign, sample, options, target_micro, (url, api_key, model))
        )
    except MosaicError as error:
        console.print(f"[red]{error}[/red]")
        return 1
    print_calibration(result, own_scale)
    return 0
