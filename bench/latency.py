"""Auction latency vs a single reply from the same worker, through the HTTP service.

Without --url it starts its own worker (`python -m workers.server`) and gateway (`mosaic serve` with
WORKER_URLS pointing at that worker and an embedded Redis in a temp dir), so both figures come from the
same worker. Gateway overhead = total − wall time with a worker request in flight (timings_ms.workers).

    .venv/bin/python bench/latency.py                     # SmolLM2 on CPU, M=8, 2 advertisers, 64 tokens
    .venv/bin/python bench/latency.py --dtype float32     # the same with fp32 weights
    .venv/bin/python bench/latency.py --url http://gw:8000 --worker-url http://worker:8001

Last line: `ratio=<auction/single> overhead_ms_p50=<ms>`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
QUERY = "Learning to play the guitar."
ADVERTISERS = [
    {
        "id": "strummaster",
        "name": "StrumMaster",
        "description": "selling guitars, tuners, and learning materials",
    },
    {"id": "chordify", "name": "Chordify", "description": "offering online guitar lessons"},
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, path: str, process: subprocess.Popen[bytes], timeout_s: float = 300) -> None:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{url}{path} not ready after {timeout_s} s")


@contextlib.contextmanager
def local_stack(model: str, dtype: str) -> Iterator[tuple[str, str]]:
    worker_port, gateway_port = free_port(), free_port()
    worker_url, gateway_url = f"http://127.0.0.1:{worker_port}", f"http://127.0.0.1:{gateway_port}"
    with tempfile.TemporaryDirectory() as data_dir:
        env = {**os.environ, "LOG_LEVEL": "WARNING", "WORKER_DTYPE": dtype}
        worker = subprocess.Popen(
            [sys.executable, "-m", "workers.server", "--model", model, "--port", str(worker_port)],
            cwd=REPO,
            env=env,
            start_new_session=True,
        )
        gateway_env = {**env, "WORKER_URLS": worker_url, "PORT": str(gateway_port), "DATA_DIR": data_dir}
        gateway_env.pop("REDIS_URL", None)
        gateway = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"], cwd=REPO, env=gateway_env, start_new_session=True
        )
        try:
            wait_ready(worker_url, "/health", worker)
            wait_ready(gateway_url, "/readyz", gateway)
            yield gateway_url, worker_url
        finally:
            for process in (gateway, worker):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=20)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
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
    args = parser.parse_args()
    if bool(args.url) != bool(args.worker_url):
        parser.error("--url and --worker-url go together")

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

    console = Console()
    table = Table(
        title=f"auction (M={args.candidates}, 2 advertisers, ≤{args.max_tokens} tokens) vs one reply, "
        f"medians of {args.repeats}" + ("" if args.url else f", worker {args.model} dtype={args.dtype}")
    )
    table.add_column("what")
    table.add_column("median", justify="right")
    table.add_column("p90", justify="right")
    table.add_row(
        "single reply (s)", f"{statistics.median(single_s):.3f}", f"{percentile(single_s, 0.9):.3f}"
    )
    table.add_row(
        "auction, client-side (s)", f"{statistics.median(auction_s):.3f}", f"{percentile(auction_s, 0.9):.3f}"
    )
    for stage, values in stages.items():
        table.add_row(
            f"  stage {stage} (ms)", f"{statistics.median(values):.1f}", f"{percentile(values, 0.9):.1f}"
        )
    table.add_row(
        "gateway overhead (ms)",
        f"{statistics.median(overhead_ms):.2f}",
        f"{percentile(overhead_ms, 0.9):.2f}",
    )
    table.add_row("tokens: single reply", f"{statistics.median(single_tokens):.0f}", "")
    table.add_row("tokens: mean per candidate", f"{statistics.median(auction_tokens):.1f}", "")
    console.print(table)
    ratio = statistics.median(auction_s) / statistics.median(single_s)
    print(json.dumps({"single_s": single_s, "auction_s": auction_s, "overhead_ms": overhead_ms}))
    print(f"ratio={ratio:.3f} overhead_ms_p50={statistics.median(overhead_ms):.2f}")


if __name__ == "__main__":
    main()
