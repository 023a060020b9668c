"""`mosaic auction "query" -a id:Name:description ...`: one auction, printed as a reply and a table.

Against a running gateway (`--url`) or in process (the embedded default app, driven through httpx's
ASGI transport with its lifespan: the same code path as the HTTP service); both through the typed
client `mosaic_client.AsyncMosaicClient` (retries, Idempotency-Key, one exception per status).
Part of the CLI, above everything it drives: imports `mosaic_client`, `app.contract`, app.settings
and, lazily, `app.gateway.app`; nothing imports it but `app.cli` and `app.cli_calibrate` (its
`gateway_client`). See docs/DESIGN.md § Layout.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
from pydantic import ValidationError
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from app.contract.result import AuctionResponse
from app.settings import Settings
from mosaic_client import AsyncMosaicClient, MosaicError
from mosaic_client import parse_advertiser as parse_client_advertiser

console = Console()


def parse_advertiser(spec: str) -> dict[str, str]:
    """`id:Name:description` (the description may contain ':'); characters an id may not hold become '-'."""
    fields = parse_client_advertiser(spec)
    fields["id"] = re.sub(r"[^A-Za-z0-9_.\-]", "-", fields["id"])
    return fields


@contextlib.asynccontextmanager
async def gateway_client(
    url: str | None, api_key: str | None, model: str | None
) -> AsyncIterator[AsyncMosaicClient]:
    """A client of the gateway at `url`, or of the embedded default app run in process (its lifespan
    entered here, reached through httpx's ASGI transport: the HTTP service's own code path)."""
    if url is not None:
        async with AsyncMosaicClient(url, api_key=api_key, timeout_s=600) as client:
            yield client
        return
    from app.gateway.app import create_app

    overrides: dict[str, Any] = {"log_level": "WARNING"}
    if model is not None:
        overrides["worker_model"] = model
    app = create_app(Settings(**overrides))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with AsyncMosaicClient(
            "http://mosaic", api_key=api_key, timeout_s=600, transport=transport, retries=0
        ) as client:
            yield client


async def _post_auction(
    payload: dict[str, Any], url: str | None, api_key: str | None, model: str | None
) -> AuctionResponse:
    async with gateway_client(url, api_key, model) as client:
        return await client.auction(payload["query"], payload["advertisers"], **_fields(payload))


def _fields(payload: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in payload.items() if key not in ("query", "advertisers")}


def run_auction_command(
    *,
    query: str,
    advertisers: list[str],
    url: str | None,
    api_key: str | None,
    candidates: int | None,
    proposal: str,
    tau: float | None,
    max_tokens: int | None,
    seed: int | None,
    model: str | None,
    show_candidates: bool,
) -> int:
    try:
        parsed = [parse_advertiser(spec) for spec in advertisers]
    except ValueError as error:
        console.print(f"[red]{error}[/red]")
        return 2
    payload: dict[str, Any] = {"query": query, "advertisers": parsed, "proposal": proposal}
    for key, value in (("candidates", candidates), ("tau", tau), ("max_tokens", max_tokens), ("seed", seed)):
        if value is not None:
            payload[key] = value
    payload["include_candidates"] = show_candidates
    try:
        with console.status("running the auction…"):
            answer = asyncio.run(_post_auction(payload, url, api_key, model))
    except MosaicError as error:
        console.print(f"[red]{error}[/red]")
        return 1
    except ValidationError as error:  # refused by the request model before anything was sent
        console.print(f"[red]invalid request: {error}[/red]")
        return 2
    body = answer.model_dump(mode="json", exclude_none=True)
    _print_outcome(body)
    if show_candidates and body.get("candidates"):
        _print_candidates(body["candidates"])
    return 0


def _print_outcome(body: dict[str, Any]) -> None:
    """The reply with its disclosure label, the payments table, the ESS and the stage timings."""
    # The disclosure label above the reply, as is (Text: a sponsor's name is never read as markup).
    console.print(Text(body["disclosure"].get("label") or "Not sponsored", style="bold"))
    console.print(Panel(body["reply"], title=f"reply (candidate {body['chosen_index']})", expand=False))
    table = Table(title=f"auction {body['auction_id']}  τ={body['tau']:g}  proposal={body['proposal']}")
    for column in ("advertiser", "payment", "expected reward", "expected utility"):
        table.add_column(column, justify="right" if column != "advertiser" else "left")
    for row in body["advertisers"]:
        table.add_row(
            row["id"],
            f"{row['payment']:.6f}",
            f"{row['expected_reward']:.6f}",
            f"{row['expected_utility']:.6f}",
        )
    table.add_section()
    table.add_row("revenue", f"{body['revenue']:.6f}", "", "")
    console.print(table)
    timings = body["timings_ms"]
    console.print(
        f"ESS {body['effective_sample_size']:.2f}  ·  "
        + "  ".join(f"{stage} {milliseconds:.0f} ms" for stage, milliseconds in timings.items())
    )


def _print_candidates(candidates: list[dict[str, Any]]) -> None:
    table = Table(title="candidates")
    for column in ("#", "π_j", "log π_ref", "log q", "rewards", "text"):
        table.add_column(column)
    for index, candidate in enumerate(candidates):
        rewards = ", ".join(f"{k}={v:.2f}" for k, v in candidate["rewards"].items())
        table.add_row(
            str(index),
            f"{candidate['probability']:.3f}",
            f"{candidate['log_ref']:.2f}",
            f"{candidate['log_proposal']:.2f}",
            rewards,
            candidate["text"][:80].replace("\n", " "),
        )
    console.print(table)
