"""The cost of an auction as M and n grow, from the service's own stage timings and the worker's counters.

Starts a worker and a gateway (`bench.common.local_stack`; or uses --url/--worker-url) and runs one
auction per (M, n) on the grid, ``--repeats`` times: wall time per stage (`timings_ms` of the response:
tokenize, generate, score, mechanism, billing, total) and the model tokens it cost (the worker's
`vllm:prompt_tokens_total` + `vllm:generation_tokens_total` before and after). The advertisers are the
first n of a fixed list of 10.

    .venv/bin/python bench/cost.py                                  # SmolLM2, M 1..64 × n 1..10, 32 tokens
    .venv/bin/python bench/cost.py --model tiny-random --candidates 1,4 --advertisers 1,2

Last line: `total_s_m<M>_n<n>=… tokens_m<M>_n<n>=…` for every grid point (medians).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
from pathlib import Path

import httpx
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common

QUERY = "Learning to play the guitar."
ADVERTISERS = [
    {"id": "strummaster", "name": "StrumMaster", "description": "selling guitars, tuners and books"},
    {"id": "chordify", "name": "Chordify", "description": "offering online guitar lessons"},
    {"id": "fretwise", "name": "Fretwise", "description": "an app that teaches chords"},
    {"id": "ampville", "name": "Ampville", "description": "selling amplifiers and pedals"},
    {"id": "tunely", "name": "Tunely", "description": "a free online tuner"},
    {"id": "stringcraft", "name": "StringCraft", "description": "handmade guitar strings"},
    {"id": "jamroom", "name": "JamRoom", "description": "rehearsal rooms by the hour"},
    {"id": "luthierco", "name": "LuthierCo", "description": "guitar repairs and setups"},
    {"id": "capopro", "name": "CapoPro", "description": "capos and accessories"},
    {"id": "songbook", "name": "Songbook", "description": "sheet music and tabs"},
]
STAGES = ("tokenize", "generate", "score", "mechanism", "billing", "total")


def model_tokens(client: httpx.Client, worker_url: str) -> float:
    """Prompt + generated tokens the worker has processed so far (its vLLM-named counters)."""
    text = client.get(f"{worker_url}/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(("vllm:prompt_tokens_total", "vllm:generation_tokens_total"))
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running gateway (needs --worker-url too)")
    parser.add_argument("--worker-url", help="its worker (for the token counters)")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--dtype", default=os.environ.get("WORKER_DTYPE", "auto"))
    parser.add_argument("--candidates", default="1,4,16,64", help="comma-separated M values")
    parser.add_argument("--advertisers", default="1,2,5,10", help="comma-separated n values (≤ 10)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=3600.0,
        help="worker timeout and auction deadline of the stack it starts",
    )
    parser.add_argument("--api-key", default=os.environ.get("MOSAIC_API_KEY"))
    args = parser.parse_args()
    if bool(args.url) != bool(args.worker_url):
        parser.error("--url and --worker-url go together")
    m_values = [int(m) for m in args.candidates.split(",")]
    n_values = [int(n) for n in args.advertisers.split(",")]
    if max(n_values) > len(ADVERTISERS):
        parser.error(f"at most {len(ADVERTISERS)} advertisers")
    env = {**os.environ, "LOG_LEVEL": "WARNING", "WORKER_DTYPE": args.dtype}
    stack = (
        contextlib.nullcontext((args.url, args.worker_url))
        if args.url
        else common.local_stack(
            args.model,
            [],
            env,
            {},
            {"WORKER_TIMEOUT_S": str(args.timeout_s), "AUCTION_DEADLINE_S": str(args.timeout_s)},
            ready_timeout_s=300,
            stop_timeout_s=20,
        )
    )
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    results: dict[tuple[int, int], dict[str, list[float]]] = {}
    with stack as (gateway_url, worker_url), httpx.Client(timeout=1800) as client:
        grid = [(m, n) for n in n_values for m in m_values]
        for m, n in tqdm(grid * args.repeats, desc="cost grid"):
            before = model_tokens(client, worker_url)
            response = client.post(
                f"{gateway_url}/auction",
                headers=headers,
                json={
                    "query": QUERY,
                    "advertisers": ADVERTISERS[:n],
                    "candidates": m,
                    "max_tokens": args.max_tokens,
                },
            )
            response.raise_for_status()
            record = results.setdefault((m, n), {stage: [] for stage in (*STAGES, "tokens")})
            for stage in STAGES:
                record[stage].append(response.json()["timings_ms"][stage] / 1000.0)
            record["tokens"].append(model_tokens(client, worker_url) - before)

    def median(m: int, n: int, key: str) -> float:
        return statistics.median(results[(m, n)][key])

    rows = [
        [str(n), str(m), *(f"{median(m, n, stage):.3f}" for stage in STAGES), f"{median(m, n, 'tokens'):.0f}"]
        for n in n_values
        for m in m_values
    ]
    common.rich_table(
        f"auction cost vs M and n ({args.model if not args.url else 'remote'}, ≤{args.max_tokens} tokens, "
        f"medians of {args.repeats}; seconds)",
        ["n", "M", *STAGES, "model tokens"],
        rows,
        left=2,
    )
    pairs = []
    for n in n_values:
        for m in m_values:
            pairs += [
                f"total_s_m{m}_n{n}={median(m, n, 'total'):.3f}",
                f"tokens_m{m}_n{n}={median(m, n, 'tokens'):.0f}",
            ]
    print(" ".join(pairs))


if __name__ == "__main__":
    main()
