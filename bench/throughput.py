"""Throughput and latency of concurrent auctions: closed-loop clients C = 1, 2, 4, 8, 16 in one run.

Starts `mosaic serve` as users run it (`python -m app.cli serve`: the embedded worker in the default
dtype, an embedded Redis in a temp dir) — or uses ``--url`` — then, for each C, runs C closed-loop
clients for ``--duration-s`` seconds (each sends its next auction as soon as the last one answers).
Every request is a paper instance (``../shared/data/instances.jsonl``, its first 2 advertisers) with
M=8, 64 tokens, ``seed`` varying. Latency counts answered 200s only; 429s (admission refusals, the
documented backpressure) are counted apart and the client waits the advised ``Retry-After`` (capped
at 1 s) before its next request; anything else is an error. A warm-up auction runs first.

    .venv/bin/python bench/throughput.py                                # SmolLM2, C 1,2,4,8,16, 60 s each
    .venv/bin/python bench/throughput.py --model tiny-random --clients 1,4 --duration-s 10

Last line: `throughput_c1=… throughput_c8=… speedup_c8=… p50_c8_over_c1=…` (plus per-C figures).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common

DEFAULT_INSTANCES = common.REPO.parent / "shared" / "data" / "instances.jsonl"


@dataclass
class Level:
    clients: int
    seconds: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    refused: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return len(self.latencies_s) / self.seconds if self.seconds else 0.0

    def quantile(self, q: float) -> float:
        return common.percentile(self.latencies_s, q) if self.latencies_s else float("nan")


def load_requests(path: Path, candidates: int, max_tokens: int) -> list[dict[str, Any]]:
    requests = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            requests.append(
                {
                    "query": record["query"],
                    "advertisers": record["advertisers"][:2],
                    "candidates": candidates,
                    "max_tokens": max_tokens,
                }
            )
    return requests


@contextlib.contextmanager
def serve(
    model: str | None, ready_timeout_s: float, log_dir: Path, extra_env: dict[str, str] | None = None
) -> Iterator[str]:
    """`mosaic serve` on a free port, its embedded worker and Redis (and ``extra_env``); yields its URL."""
    port = common.free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "ALLOW_INSECURE_KEYS": "true",
        "API_KEYS": "",
        **(extra_env or {}),
    }
    env.pop("REDIS_URL", None)
    env.pop("WORKER_URLS", None)
    if model:
        env["WORKER_MODEL"] = model
    with tempfile.TemporaryDirectory() as data_dir, open(log_dir / "gateway.log", "wb") as log:
        env["DATA_DIR"] = data_dir
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"],
            cwd=common.REPO,
            env=env,
            start_new_session=True,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            common.wait_ready(url + "/readyz", process, ready_timeout_s)
            yield url
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 15)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)


async def run_level(
    url: str, headers: dict[str, str], requests: list[dict[str, Any]], level: Level, duration_s: float
) -> None:
    import httpx

    deadline = time.monotonic() + duration_s
    counter = iter(range(10**9))

    async def client(client_index: int, http: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            number = next(counter)
            body = {**requests[number % len(requests)], "seed": number}
            started = time.perf_counter()
            try:
                answer = await http.post(f"{url}/auction", json=body, headers=headers)
            except httpx.HTTPError as error:
                level.errors[type(error).__name__] = level.errors.get(type(error).__name__, 0) + 1
                continue
            if answer.status_code == 200:
                level.latencies_s.append(time.perf_counter() - started)
            elif answer.status_code == 429:
                level.refused += 1
                await asyncio.sleep(min(1.0, float(answer.headers.get("retry-after", "1"))))
            else:
                key = f"http_{answer.status_code}"
                level.errors[key] = level.errors.get(key, 0) + 1

    started = time.monotonic()
    limits = httpx.Limits(max_connections=level.clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        await asyncio.gather(*(client(i, http) for i in range(level.clients)))
    level.seconds = time.monotonic() - started


def report(levels: list[Level]) -> None:
    header = ["clients", "auctions", "auctions/s", "p50 s", "p95 s", "429s", "errors"]
    rows = [
        [
            str(level.clients),
            str(len(level.latencies_s)),
            f"{level.throughput:.3f}",
            f"{level.quantile(0.5):.2f}",
            f"{level.quantile(0.95):.2f}",
            str(level.refused),
            ",".join(f"{k}:{v}" for k, v in sorted(level.errors.items())) or "0",
        ]
        for level in levels
    ]
    common.text_table(print, header, rows)
    by_clients = {level.clients: level for level in levels}
    pairs: dict[str, str] = {}
    for level in levels:
        pairs[f"throughput_c{level.clients}"] = f"{level.throughput:.4f}"
        pairs[f"p50_c{level.clients}"] = f"{level.quantile(0.5):.3f}"
    if 1 in by_clients and 8 in by_clients and by_clients[1].throughput:
        one, eight = by_clients[1], by_clients[8]
        pairs["speedup_c8"] = f"{eight.throughput / one.throughput:.3f}"
        pairs["p50_c8_over_c1"] = f"{eight.quantile(0.5) / one.quantile(0.5):.3f}"
    pairs["errors"] = str(sum(sum(level.errors.values()) for level in levels))
    print(" ".join(f"{key}={value}" for key, value in pairs.items()))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="an already running gateway (default: start `mosaic serve`)")
    parser.add_argument("--api-key", default=os.environ.get("MOSAIC_API_KEY", ""))
    parser.add_argument("--model", help="WORKER_MODEL for the started server (default: its default)")
    parser.add_argument("--clients", default="1,2,4,8,16", help="comma-separated C values")
    parser.add_argument("--duration-s", type=float, default=60.0, help="measured time per C")
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--instances", type=Path, default=DEFAULT_INSTANCES)
    parser.add_argument("--ready-timeout-s", type=float, default=600.0)
    args = parser.parse_args()

    requests = load_requests(args.instances, args.candidates, args.max_tokens)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    levels = [Level(int(c)) for c in args.clients.split(",")]
    with contextlib.ExitStack() as stack:
        if args.url:
            url = args.url.rstrip("/")
        else:
            log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            url = stack.enter_context(serve(args.model, args.ready_timeout_s, log_dir))
        warm = Level(1)
        asyncio.run(run_level(url, headers, requests[:1], warm, 0.001))  # one auction: load and warm up
        for level in levels:
            print(f"# {level.clients} clients for {args.duration_s:g} s ...", file=sys.stderr, flush=True)
            asyncio.run(run_level(url, headers, requests, level, args.duration_s))
            print(
                f"#   {len(level.latencies_s)} auctions, {level.throughput:.3f}/s, "
                f"p50 {statistics.median(level.latencies_s) if level.latencies_s else float('nan'):.2f} s",
                file=sys.stderr,
                flush=True,
            )
    report(levels)


if __name__ == "__main__":
    main()
