"""Per-key fair share: a heavy key's largest admissible auctions in a loop beside a light key's small ones.

Starts `mosaic serve` (its embedded worker and Redis; or uses ``--url`` with ``--heavy-key`` and
``--light-key`` of a running one) with two platform keys. The heavy request is the largest the gateway
admits (`app.auction.cost`: MAX_TOKENS_LIMIT tokens, the paper instance's query, and the most
candidates, then advertisers, whose cost stays within ADMISSION_KEY_SHARE × MAX_TOKENS_IN_FLIGHT),
sent as a test auction (never billed) by ``--heavy-clients`` closed-loop clients on one key. The light
key runs one closed-loop client of throughput.py's auction (M=8, 64 tokens, 2 advertisers): first alone
for ``--duration-s`` (its normal latency, in the same run), then beside the heavy stream for as long.
With ``--ignore-eos`` (the default) every reply decodes its max_tokens, so the heavy auction does all the
work its cost states. The light key's p50 beside the heavy stream should stay within 2× of alone.

    .venv/bin/python bench/fairness.py --model tiny-random --duration-s 30
    .venv/bin/python bench/fairness.py --duration-s 60                       # SmolLM2

Last line: `light_p50_alone_s=… light_p50_loaded_s=… p50_ratio=… heavy_cost_tokens=… …`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.auction.cost import max_auction_cost, request_cost_bound
from app.contract.request import AuctionRequest
from app.settings import Settings
from bench import common
from bench.throughput import DEFAULT_INSTANCES, Level, load_requests, run_level, serve

HEAVY_KEY, LIGHT_KEY = "fairness-bench-heavy-key-0123456789", "fairness-bench-light-key-0123456789"


def largest_admissible(base: dict[str, Any], settings: Settings) -> tuple[dict[str, Any], int]:
    """The request with the most candidates, then advertisers (copies of the instance's), at
    MAX_TOKENS_LIMIT tokens, whose cost fits what one auction may cost; and that cost."""
    limit = max_auction_cost(settings)
    advertisers = list(base["advertisers"])

    def cost(m: int, n: int) -> int:
        body = {**base, "advertisers": _advertisers(advertisers, n), "candidates": m}
        return request_cost_bound(AuctionRequest.model_validate(body), settings, workers=1)

    body = {**base, "max_tokens": settings.max_tokens_limit, "test": True}
    base = body
    n = len(advertisers)
    m = max((m for m in range(1, settings.max_candidates + 1) if cost(m, n) <= limit), default=1)
    while m == settings.max_candidates and n < settings.max_advertisers and cost(m, n + 1) <= limit:
        n += 1
    body = {**body, "candidates": m, "advertisers": _advertisers(advertisers, n)}
    return body, cost(m, n)


def _advertisers(pool: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    return [{**pool[i % len(pool)], "id": f"{pool[i % len(pool)]['id']}-{i}"} for i in range(n)]


async def loaded(
    url: str,
    keys: tuple[str, str],
    heavy: dict[str, Any],
    light: list[dict[str, Any]],
    clients: int,
    duration_s: float,
) -> tuple[Level, Level]:
    heavy_level, light_level = Level(clients), Level(1)
    heavy_run = asyncio.ensure_future(
        run_level(url, {"Authorization": f"Bearer {keys[0]}"}, [heavy], heavy_level, duration_s)
    )
    await asyncio.sleep(min(2.0, duration_s / 10))  # the heavy stream first holds its share
    await run_level(url, {"Authorization": f"Bearer {keys[1]}"}, light, light_level, duration_s)
    await heavy_run
    return heavy_level, light_level


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running gateway (with --heavy-key and --light-key)")
    parser.add_argument("--heavy-key", default=HEAVY_KEY)
    parser.add_argument("--light-key", default=LIGHT_KEY)
    parser.add_argument("--model", help="WORKER_MODEL of the started server (default: its default)")
    parser.add_argument("--duration-s", type=float, default=30.0, help="measured time, alone and loaded")
    parser.add_argument("--heavy-clients", type=int, default=1)
    parser.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--instances", type=Path, default=DEFAULT_INSTANCES)
    parser.add_argument("--ready-timeout-s", type=float, default=600.0)
    args = parser.parse_args()
    keys = (args.heavy_key, args.light_key)

    settings = Settings()
    light = load_requests(args.instances, 8, 64)
    heavy, heavy_cost = largest_admissible(light[0], settings)
    env = {"API_KEYS": ",".join(keys), "WORKER_FORCE_IGNORE_EOS": str(args.ignore_eos).lower()}
    with contextlib.ExitStack() as stack:
        if args.url:
            url = args.url.rstrip("/")
        else:
            log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            url = stack.enter_context(serve(args.model, args.ready_timeout_s, log_dir, env))
        light_headers = {"Authorization": f"Bearer {keys[1]}"}
        asyncio.run(run_level(url, light_headers, light[:1], Level(1), 0.001))  # load and warm up
        print(f"# the light key alone for {args.duration_s:g} s ...", file=sys.stderr, flush=True)
        alone = Level(1)
        asyncio.run(run_level(url, light_headers, light, alone, args.duration_s))
        print(
            f"# beside {args.heavy_clients} heavy client(s): M={heavy['candidates']}, "
            f"{heavy['max_tokens']} tokens, {len(heavy['advertisers'])} advertisers, cost {heavy_cost} "
            f"of {max_auction_cost(settings)} ...",
            file=sys.stderr,
            flush=True,
        )
        started = time.monotonic()
        heavy_level, light_loaded = asyncio.run(
            loaded(url, keys, heavy, light, args.heavy_clients, args.duration_s)
        )
        print(f"# loaded phase: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    report(alone, light_loaded, heavy_level, heavy, heavy_cost)


def report(alone: Level, light: Level, heavy: Level, body: dict[str, Any], cost: int) -> None:
    rows = [
        [
            name,
            str(len(level.latencies_s)),
            f"{level.quantile(0.5):.2f}",
            f"{level.quantile(0.95):.2f}",
            str(level.refused),
            ",".join(f"{k}:{v}" for k, v in sorted(level.errors.items())) or "0",
        ]
        for name, level in (("light alone", alone), ("light beside heavy", light), ("heavy", heavy))
    ]
    common.text_table(print, ["client", "auctions", "p50 s", "p95 s", "429s", "errors"], rows)
    ratio = light.quantile(0.5) / alone.quantile(0.5) if alone.latencies_s else float("nan")
    pairs = {
        "light_p50_alone_s": f"{alone.quantile(0.5):.3f}",
        "light_p50_loaded_s": f"{light.quantile(0.5):.3f}",
        "light_p95_loaded_s": f"{light.quantile(0.95):.3f}",
        "p50_ratio": f"{ratio:.3f}",
        "heavy_auctions": str(len(heavy.latencies_s)),
        "heavy_p50_s": f"{heavy.quantile(0.5):.3f}",
        "heavy_cost_tokens": str(cost),
        "heavy_candidates": str(body["candidates"]),
        "heavy_advertisers": str(len(body["advertisers"])),
        "light_429s": str(light.refused),
        "errors": str(sum(level.errors.get(k, 0) for level in (alone, light, heavy) for k in level.errors)),
    }
    print(" ".join(f"{key}={value}" for key, value in pairs.items()))


if __name__ == "__main__":
    main()
