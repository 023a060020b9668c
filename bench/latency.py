"""Auction latency vs a single reply from the same worker, through the HTTP service.

Without --url it starts its own worker (`python -m workers.server`) and gateway (`mosaic serve` with
WORKER_URLS pointing at that worker and an embedded Redis in a temp dir), so both figures come from the
same worker. Gateway overhead = total − wall time with a worker request in flight (timings_ms.workers).

    .venv/bin/python bench/latency.py                     # SmolLM2 on CPU, M=8, 2 advertisers, 64 tokens
    .venv/bin/python bench/latency.py --dtype float32     # the same with fp32 weights
    .venv/bin/python bench/latency.py --url http://gw:8000 --worker-url http://worker:8001

Last line: `ratio=<auction/single> overhead_ms_p50=<ms>`.

    .venv/bin/python bench/latency.py --signing --model tiny-random --candidates 8 --max-tokens 64 \
        --repeats 100                                     # what signed records + the log add (issue 35)

`--signing`: two gateways over one worker, the defaults (signed) vs ATTESTATION_ENABLED=false, pairs
in a seeded balanced order; the same as `bench/attestation.py --gateway` with its options (`--aa`: an
A/A run, both signed; `--set`, `--set-a`, `--repo-a`); last line `overhead_ms_p50_a=<ms>
overhead_ms_p50_b=<ms> order_effect_ms_p50=<ms> signing_added_ms_p50=<ms> ci95=[lo,hi]`.

    .venv/bin/python bench/latency.py --idempotency --model tiny-random --candidates 2 --max-tokens 4 \
        --repeats 200                                     # what an Idempotency-Key adds

`--idempotency`: auctions in interleaved pairs, one with a fresh `Idempotency-Key` and one without;
gateway overhead of each = client-side wall time − wall time with a worker request in flight (so it
counts the claim, the WATCHed final write and HTTP, which the reply's own `timings_ms` of a keyed
auction cannot: they are stored with it before its final write). Last line:
`overhead_ms_p50_no_key=<ms> overhead_ms_p50_key=<ms> idempotency_added_ms_p50=<ms>` (the median of
the paired differences).

    .venv/bin/python bench/latency.py --campaign --model tiny-random --candidates 2 --max-tokens 4 \
        --repeats 200 [--frequency-cap]                   # what `campaigns: [id]` adds (with its cap)

`--campaign`: registers StrumMaster once as a campaign (`POST /campaigns`, a total budget that never
binds), then auctions in interleaved pairs with the same seed and the same advertisers in the same
order, StrumMaster given inline in one and as `campaigns: [id]` in the other (read from the registry,
its budget read, reserved and posted: two more Redis round trips before the model work and two
after). Gateway overhead of each = client-side wall time − wall time with a worker request in flight.
Last line: `overhead_ms_p50_inline=<ms> overhead_ms_p50_campaign=<ms> campaign_overhead_p50_ms=<ms>`
(the median of the paired differences; issue 33's target is ≤ 1 ms). `--frequency-cap`: the campaign has
a frequency cap it never reaches and each auction a `user_id`: its cap slot is reserved (one more round
trip before the model work) and posted after the reply (issue 34). `--aa`: both auctions of each pair
inline (A/A: the paired difference is the bench's own asymmetry, ≈ 0; rows split by which went first).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common

QUERY = "Learning to play the guitar."
ADVERTISERS = [
    {
        "id": "strummaster",
        "name": "StrumMaster",
        "description": "selling guitars, tuners, and learning materials",
    },
    {"id": "chordify", "name": "Chordify", "description": "offering online guitar lessons"},
]


def local_stack(model: str, dtype: str) -> contextlib.AbstractContextManager[tuple[str, str]]:
    """A worker (``--model``, WORKER_DTYPE=dtype) and a gateway in front of it; (gateway_url, worker_url)."""
    env = {**os.environ, "LOG_LEVEL": "WARNING", "WORKER_DTYPE": dtype}
    return common.local_stack(model, [], env, {}, {}, ready_timeout_s=300, stop_timeout_s=20)


def main() -> None:
    if "--signing" in sys.argv[1:]:  # two gateways: its own options (--aa, --set), bench/attestation.py
        from bench import attestation  # it imports this module: imported here, not on top

        attestation.main(["--gateway", *(arg for arg in sys.argv[1:] if arg != "--signing")])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running gateway (needs --worker-url too)")
    parser.add_argument("--worker-url", help="the worker behind it, for the single-reply baseline")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument(
        "--dtype",
        default=os.environ.get("WORKER_DTYPE", "auto"),
        choices=["auto", "float32", "bfloat16"],
        help="weights of the worker it starts (auto: bf16 where the CPU has native bf16)",
    )
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--api-key", default=os.environ.get("MOSAIC_API_KEY"))
    parser.add_argument(
        "--idempotency", action="store_true", help="gateway overhead with and without an Idempotency-Key"
    )
    parser.add_argument(
        "--campaign",
        action="store_true",
        help="gateway overhead of an advertiser entered as `campaigns: [id]` vs the same one inline",
    )
    parser.add_argument(
        "--frequency-cap",
        action="store_true",
        help="with --campaign: the campaign has a frequency cap (never reached) and each auction a "
        "user_id, so its cap slot is reserved before the model work and posted after the reply",
    )
    parser.add_argument("--aa", action="store_true", help="with --campaign: A/A, both of each pair inline")
    parser.add_argument(
        "--signing",
        action="store_true",
        help="gateway overhead of signed records + the transparency log vs ATTESTATION_ENABLED=false "
        "(two gateways over one worker): the same as bench/attestation.py --gateway, with its options "
        "(--aa, --set NAME=VALUE)",
    )
    args = parser.parse_args()
    if bool(args.url) != bool(args.worker_url):
        parser.error("--url and --worker-url go together")
    if args.idempotency:
        idempotency_overhead(args)
        return
    if args.campaign:
        campaign_overhead(args)
        return

    stack = (
        contextlib.nullcontext((args.url, args.worker_url))
        if args.url
        else local_stack(args.model, args.dtype)
    )
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with stack as (gateway_url, worker_url), httpx.Client(timeout=900) as client:
        model = client.get(f"{worker_url}/v1/models").json()["data"][0]["id"]
        prompt = client.post(
            f"{worker_url}/tokenize",
            json={
                "model": model,
                "add_generation_prompt": True,
                "add_special_tokens": False,
                "messages": [
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": QUERY},
                ],
            },
        ).json()["tokens"]
        single_s: list[float] = []
        single_tokens: list[int] = []
        auction_s: list[float] = []
        overhead_ms: list[float] = []
        stages: dict[str, list[float]] = {}
        auction_tokens: list[float] = []
        # warm-up: one of each, not timed
        client.post(f"{worker_url}/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": 4})
        client.post(
            f"{gateway_url}/auction",
            headers=headers,
            json={"query": QUERY, "advertisers": ADVERTISERS, "candidates": 2, "max_tokens": 4},
        )
        for repeat in tqdm(range(args.repeats), desc="single reply vs auction"):
            started = time.perf_counter()
            single = client.post(
                f"{worker_url}/v1/completions",
                json={
                    "model": model,
                    "prompt": prompt,
                    "n": 1,
                    "max_tokens": args.max_tokens,
                    "seed": repeat,
                    "logprobs": 0,
                    "return_token_ids": True,
                },
            )
            single_s.append(time.perf_counter() - started)
            single.raise_for_status()
            single_tokens.append(single.json()["usage"]["completion_tokens"])
            started = time.perf_counter()
            response = client.post(
                f"{gateway_url}/auction",
                headers=headers,
                json={
                    "query": QUERY,
                    "advertisers": ADVERTISERS,
                    "candidates": args.candidates,
                    "max_tokens": args.max_tokens,
                    "seed": repeat,
                    "include_candidates": True,
                },
            )
            auction_s.append(time.perf_counter() - started)
            response.raise_for_status()
            body = response.json()
            timings = body["timings_ms"]
            overhead_ms.append(timings["total"] - timings["workers"])
            for stage, value in timings.items():
                stages.setdefault(stage, []).append(value)
            auction_tokens.append(statistics.mean(c["num_tokens"] for c in body["candidates"]))

    def row(label: str, values: list[float], digits: int) -> list[str]:
        return [
            label,
            f"{statistics.median(values):.{digits}f}",
            f"{common.percentile(values, 0.9):.{digits}f}",
        ]

    rows = [
        row("single reply (s)", single_s, 3),
        row("auction, client-side (s)", auction_s, 3),
        *(row(f"  stage {stage} (ms)", values, 1) for stage, values in stages.items()),
        row("gateway overhead (ms)", overhead_ms, 2),
        ["tokens: single reply", f"{statistics.median(single_tokens):.0f}", ""],
        ["tokens: mean per candidate", f"{statistics.median(auction_tokens):.1f}", ""],
    ]
    common.rich_table(
        f"auction (M={args.candidates}, 2 advertisers, ≤{args.max_tokens} tokens) vs one reply, "
        f"medians of {args.repeats}" + ("" if args.url else f", worker {args.model} dtype={args.dtype}"),
        ["what", "median", "p90"],
        rows,
    )
    ratio = statistics.median(auction_s) / statistics.median(single_s)
    print(json.dumps({"single_s": single_s, "auction_s": auction_s, "overhead_ms": overhead_ms}))
    print(f"ratio={ratio:.3f} overhead_ms_p50={statistics.median(overhead_ms):.2f}")


def interleaved_pairs(one: Callable[[int, bool], float], repeats: int, desc: str) -> dict[bool, list[float]]:
    """`one(repeat, variant)` for both variants per repeat, alternating which goes first (after three
    untimed pairs): the measured values by variant, index-aligned for paired differences."""
    for repeat in range(3):  # warm-up
        one(repeat, True)
        one(repeat, False)
    values: dict[bool, list[float]] = {False: [], True: []}
    for repeat in tqdm(range(repeats), desc=desc):
        first = repeat % 2 == 0
        values[first].append(one(repeat, first))
        values[not first].append(one(repeat, not first))
    return values


def overhead_table(args: argparse.Namespace, rows: list[tuple[str, list[float]]]) -> None:
    """The p50 and p90 of each row (ms) under the interleaved pairs' title."""
    common.rich_table(
        f"gateway overhead (client wall − worker time, ms), M={args.candidates}, ≤{args.max_tokens} tokens, "
        f"{args.repeats} interleaved pairs",
        ["what", "p50", "p90"],
        [
            [label, f"{statistics.median(values):.3f}", f"{common.percentile(values, 0.9):.3f}"]
            for label, values in rows
        ],
    )


def idempotency_overhead(args: argparse.Namespace) -> None:
    """Interleaved pairs (keyed, not keyed): client wall − worker time, medians and paired differences."""
    stack = (
        contextlib.nullcontext((args.url, args.worker_url))
        if args.url
        else local_stack(args.model, args.dtype)
    )
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    before_write: dict[bool, list[float]] = {False: [], True: []}  # in-body, up to the final write
    with stack as (gateway_url, _worker_url), httpx.Client(timeout=900) as client:

        def one(repeat: int, keyed: bool) -> float:
            extra = {"Idempotency-Key": f"bench-{uuid.uuid4().hex}"} if keyed else {}
            payload = {
                "query": QUERY,
                "advertisers": ADVERTISERS,
                "candidates": args.candidates,
                "max_tokens": args.max_tokens,
                "seed": repeat,
            }
            started = time.perf_counter()
            response = client.post(f"{gateway_url}/auction", headers={**headers, **extra}, json=payload)
            wall_ms = (time.perf_counter() - started) * 1000
            response.raise_for_status()
            timings = response.json()["timings_ms"]
            before_write[keyed].append(timings["total"] - timings["billing"] - timings["workers"])
            return wall_ms - timings["workers"]

        overhead = interleaved_pairs(one, args.repeats, "with and without a key")
    added = [k - n for k, n in zip(overhead[True], overhead[False], strict=True)]
    overhead_table(
        args,
        [
            ("without a key", overhead[False]),
            ("with an Idempotency-Key", overhead[True]),
            ("added by the key (paired)", added),
            ("in-body, before the final write, no key", before_write[False]),
            ("in-body, before the final write, key", before_write[True]),
        ],
    )
    print(
        f"overhead_ms_p50_no_key={statistics.median(overhead[False]):.3f} "
        f"overhead_ms_p50_key={statistics.median(overhead[True]):.3f} "
        f"idempotency_added_ms_p50={statistics.median(added):.3f}"
    )


# A total budget no benchmark run exhausts (10**9 units; below 2**53 micro-units, the budget ledger's
# exact-integer bound); no daily budget, so no pacing step: α stays 1 and the two auctions are the same.
CAMPAIGN_BUDGET_MICRO = 10**15


def campaign_overhead(args: argparse.Namespace) -> None:
    """Interleaved pairs (StrumMaster inline, StrumMaster as a campaign), same seed, same advertisers in
    the same order: client wall − worker time, medians and the median of the paired differences."""
    stack = (
        contextlib.nullcontext((args.url, args.worker_url))
        if args.url
        else local_stack(args.model, args.dtype)
    )
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    registered, other = ADVERTISERS
    in_body: dict[bool, list[float]] = {False: [], True: []}  # the reply's own timings_ms: total − workers
    with stack as (gateway_url, _worker_url), httpx.Client(timeout=900) as client:
        created = client.post(
            f"{gateway_url}/campaigns",
            headers=headers,
            json={
                "id": f"bench-{uuid.uuid4().hex[:12]}",
                "owner": registered["id"],
                "name": registered["name"],
                "description": registered["description"],
                "value_scale": 1.0,
                "budget": {"total_micro": CAMPAIGN_BUDGET_MICRO},
                **(
                    {"frequency_cap": {"max_auctions": 1_000_000, "per_seconds": 3600}}
                    if args.frequency_cap
                    else {}
                ),
            },
        )
        if created.status_code != 201:
            raise SystemExit(f"POST /campaigns answered {created.status_code}: {created.text}")
        campaign_id = created.json()["id"]

        def one(repeat: int, variant: bool) -> float:
            # the campaign's advertiser bids after the inline ones: the inline twin lists them in that
            # order, so both auctions render the same prompts and draw the same candidates
            via_campaign = variant and not args.aa  # --aa: both inline (in_body keyed by variant)
            payload: dict[str, object] = {
                "query": QUERY,
                "candidates": args.candidates,
                "max_tokens": args.max_tokens,
                "seed": repeat,
                **(
                    {"advertisers": [other], "campaigns": [campaign_id], "user_id": "bench-user"}
                    if via_campaign
                    else {"advertisers": [other, registered]}
                ),
            }
            started = time.perf_counter()
            response = client.post(f"{gateway_url}/auction", headers=headers, json=payload)
            wall_ms = (time.perf_counter() - started) * 1000
            response.raise_for_status()
            body = response.json()
            if via_campaign and body["advertisers"][-1].get("campaign_id") != campaign_id:
                raise SystemExit(f"the campaign did not enter the auction: {body.get('excluded')}")
            timings = body["timings_ms"]
            in_body[variant].append(timings["total"] - timings["workers"])
            return wall_ms - timings["workers"]

        overhead = interleaved_pairs(one, args.repeats, "A/A" if args.aa else "inline vs campaign")
    added = [c - i for c, i in zip(overhead[True], overhead[False], strict=True)]
    overhead_table(
        args,
        [
            ("StrumMaster inline", overhead[False]),
            ("StrumMaster inline, A/A" if args.aa else "StrumMaster as a campaign, by id", overhead[True]),
            ("added by the campaign (paired)", added),
            ("  paired, campaign measured first", added[0::2]),  # even pairs (interleaved_pairs)
            ("  paired, inline measured first", added[1::2]),
            ("in-body (total − workers), inline", in_body[False]),
            ("in-body (total − workers), campaign", in_body[True]),
        ],
    )
    print(
        f"overhead_ms_p50_inline={statistics.median(overhead[False]):.3f} "
        f"overhead_ms_p50_campaign={statistics.median(overhead[True]):.3f} "
        f"campaign_overhead_p50_ms={statistics.median(added):.3f}"
    )


if __name__ == "__main__":
    main()
