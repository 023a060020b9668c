"""Decode speed of the worker and auction latency through the HTTP service (issue 8).

Two parts, each usable alone:

``--engine`` (in process): one request's decode time per step for the worker's decode loops
(``legacy`` = the transformers loop, ``eager`` = static KV cache, ``fast`` = static cache + CUDA
graphs on a GPU), for each ``--ns`` sample count; then teacher-forced scoring of an auction-shaped
batch (every reply under every context), with and without the shared-prefix prefill.

``--service`` (default): a worker (``python -m workers.server``, ``WORKER_FORCE_IGNORE_EOS=1`` so every
reply decodes exactly ``--tokens``) and a gateway (``python -m app.cli serve``, embedded Redis in a
temp dir) as subprocesses, as ``bench/latency.py`` does. Times one reply (``/v1/completions``, n=1)
and full auctions (``POST /auction``, context proposal) for each ``--auctions`` ``M:advertisers``.

    python3 bench/gpu.py --model random-7b --device cuda --engine --service   # H100: the issue's figures
    .venv/bin/python bench/gpu.py --model smollm2 --device cpu --engine --tokens 64 --ns 1,8 \\
        --modes legacy,fast --no-service                                        # CPU before/after

Prints tables; the last line is
``auction_s=<s> single_s=<s> ratio=<auction/single> ms_per_token=<ms>`` for the first auction case
(``ms_per_token``: the single reply's wall time per token). ``--out FILE`` writes everything there too.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# ≈ 80 tokens of query: with the chat template and system prompt each prompt is ≈ 100 tokens.
QUERY = (
    "I am planning a two-week trip through Japan in spring with my partner. We love food markets, "
    "easy day hikes and quiet towns, but we also want to see the big sights in Tokyo and Kyoto. How "
    "should we split the time between the cities and the countryside, which regional rail passes are "
    "worth buying, and what should we book well in advance?"
)
ADVERTISER_POOL = [
    ("strummaster", "TrailGear", "selling light hiking boots, rain jackets and day packs"),
    ("railpass", "RailGo", "selling regional rail passes and seat reservations"),
    ("foodtour", "MarketBites", "offering guided food market tours in Tokyo and Osaka"),
    ("ryokan", "QuietStay", "booking traditional inns in small towns"),
    ("esim", "RoamData", "selling prepaid eSIM data plans for travellers"),
    ("lang", "KanaQuick", "offering a phrasebook app with offline translation"),
    ("lugg", "HandsFree", "forwarding luggage between hotels"),
    ("cam", "PocketLens", "selling compact travel cameras"),
    ("insure", "SafeTrip", "selling travel insurance with hiking cover"),
    ("guide", "LocalPath", "matching travellers with local hiking guides"),
    ("bike", "PedalTown", "renting electric bikes in rural areas"),
    ("tea", "LeafRoute", "running tea farm visits near Kyoto"),
]
PARAMS = {"random-7b": 6.88e9, "smollm2": 1.35e8, "tiny-random": 6.4e6}  # matmul parameters per token
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, datasheet


class Report:
    """Prints to stdout and, with ``--out``, to a file."""

    def __init__(self, path: str | None) -> None:
        self.file: TextIO | None = open(path, "w") if path else None  # noqa: SIM115

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        if self.file is not None:
            self.file.write(line + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def device_name(device: str) -> str:
    import torch

    if device != "cpu" and torch.cuda.is_available():
        return str(torch.cuda.get_device_name(0))
    return f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    return next((value for key, value in PEAK_BF16_TFLOPS.items() if key in name), None)


def table(report: Report, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    report(
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    )
    report("-" * (sum(widths) + 2 * (len(widths) - 1)))
    for row in rows:
        report(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def chat(messages: Any) -> list[dict[str, str]]:
    """Plain dicts of a prompt's chat messages."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def median_time(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    times = []
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


# ------------------------------------------------------------------------------------ in process
def engine_part(args: argparse.Namespace, report: Report) -> None:
    import torch

    from app.prompts import AdvertiserProfile, advertiser_messages, reference_messages
    from workers.engine.core import Engine
    from workers.engine.sampling import SamplingOptions
    from workers.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    loaded = load_model(args.model, args.device)
    load_s = time.perf_counter() - started
    cuda = loaded.device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    engines = {
        mode: Engine(loaded, max_model_len=4096, score_token_budget=args.score_token_budget, decode=mode)
        for mode in args.modes
    }
    first = engines[args.modes[0]]
    prompt = first.tokenize_chat(chat(reference_messages(QUERY)))
    report(
        f"[engine] model={loaded.name} device={loaded.device} "
        f"dtype={str(loaded.dtype).removeprefix('torch.')} "
        f"load_s={load_s:.1f} threads={torch.get_num_threads()} prompt_tokens={len(prompt)} "
        f"reply_tokens={args.tokens} (ignore_eos)"
    )
    rows: list[list[str]] = []
    walls: dict[tuple[str, int], float] = {}
    for n in args.ns:
        options = SamplingOptions(n=n, max_tokens=args.tokens, temperature=1.0, seed=1, ignore_eos=True)
        for engine in engines.values():  # warm-up: kernels, allocator, graph capture of this shape
            engine.complete([prompt], options)
        for mode, engine in engines.items():
            run: Callable[[], object] = functools.partial(engine.complete, [prompt], options)
            walls[mode, n] = median_time(run, args.repeats, sync)
    for n in args.ns:
        for mode in args.modes:
            wall = walls[mode, n]
            base = walls[args.modes[0], n]
            rows.append(
                [
                    f"decode n={n} {mode}",
                    f"{wall:.3f}",
                    f"{wall / args.tokens * 1000:.2f}",
                    f"{n * args.tokens / wall:.0f}",
                    f"{base / wall:.2f}x",
                ]
            )
    table(report, ["case", "wall_s", "ms/step", "tok/s", f"vs {args.modes[0]}"], rows)
    fast = engines.get("fast")
    if fast is not None and fast.fast is not None:
        report(
            f"fast path: graphs={fast.fast.graphs} captures={fast.fast.captures} replays={fast.fast.replays}"
            + (f" graph_error={fast.fast.graph_error}" if fast.fast.graph_error else "")
        )
    elif fast is not None:
        report(f"fast path off: {fast.fast_path_reason}")

    # Scoring: an auction-shaped batch (reference + advertisers) x M replies.
    m, advertisers = args.auctions[0]
    profiles = [AdvertiserProfile(name=a[1], description=a[2]) for a in ADVERTISER_POOL[:advertisers]]
    contexts = [prompt] + [first.tokenize_chat(chat(advertiser_messages(QUERY, p))) for p in profiles]
    generated = first.complete(
        [prompt], SamplingOptions(n=m, max_tokens=args.tokens, seed=3, ignore_eos=True)
    )
    replies = [s.token_ids for s in generated[0].samples]
    sequences = [c + r for c in contexts for r in replies]
    sent = sum(len(s) for s in sequences)
    computed = sum(len(c) for c in contexts) + len(contexts) * sum(len(r) for r in replies)
    rows = []
    peak = peak_tflops(device_name(args.device), args.peak_tflops)
    params = args.params or PARAMS.get(args.model)
    for label, sharing, tokens in (("plain padded", False, sent), ("shared prefix", True, computed)):
        first.prefix_sharing = sharing
        first.score(sequences[: min(len(sequences), 8)])  # warm-up
        wall = median_time(lambda: first.score(sequences), args.repeats, sync)
        achieved = 2 * params * tokens / wall / 1e12 if params else None
        rows.append(
            [
                f"score {len(sequences)} seqs, {label}",
                f"{wall:.3f}",
                f"{tokens}",
                f"{tokens / wall:.0f}",
                f"{achieved:.1f}" if achieved is not None else "n/a",
                f"{100 * achieved / peak:.0f}%" if achieved is not None and peak else "n/a",
            ]
        )
    first.prefix_sharing = True
    table(report, ["case", "wall_s", "tokens", "tok/s", "TFLOP/s", "% peak"], rows)
    for engine in engines.values():
        engine.close()
    engines.clear()
    if cuda:
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------- service
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 900) -> None:
    import httpx

    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


@contextlib.contextmanager
def local_stack(args: argparse.Namespace, log_dir: Path) -> Iterator[tuple[str, str]]:
    worker_port, gateway_port = free_port(), free_port()
    worker_url, gateway_url = f"http://127.0.0.1:{worker_port}", f"http://127.0.0.1:{gateway_port}"
    with tempfile.TemporaryDirectory() as data_dir:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "LOG_LEVEL": "WARNING",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        worker_env = {
            **env,
            "WORKER_FORCE_IGNORE_EOS": "1",
            "WORKER_DECODE": args.service_decode,
            "WORKER_MAX_MODEL_LEN": "4096",
        }
        if args.threads:
            worker_env["WORKER_TORCH_THREADS"] = str(args.threads)
        gateway_env = {
            **env,
            "WORKER_URLS": worker_url,
            "PORT": str(gateway_port),
            "DATA_DIR": data_dir,
            "AUCTION_DEADLINE_S": "3600",
            "WORKER_TIMEOUT_S": "3600",
            "MAX_TOKENS_LIMIT": str(max(512, args.tokens)),
            "MAX_CANDIDATES": str(max(64, *(m for m, _ in args.auctions))),
            "MAX_ADVERTISERS": str(max(16, *(a for _, a in args.auctions))),
        }
        gateway_env.pop("REDIS_URL", None)
        worker_log = open(log_dir / "worker.log", "wb")  # noqa: SIM115
        gateway_log = open(log_dir / "gateway.log", "wb")  # noqa: SIM115
        command = [sys.executable, "-m", "workers.server", "--model", args.model, "--port", str(worker_port)]
        worker = subprocess.Popen(
            [*command, "--device", args.device],
            cwd=REPO,
            env=worker_env,
            start_new_session=True,
            stdout=worker_log,
            stderr=subprocess.STDOUT,
        )
        gateway = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"],
            cwd=REPO,
            env=gateway_env,
            start_new_session=True,
            stdout=gateway_log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_ready(worker_url + "/health", worker)
            wait_ready(gateway_url + "/readyz", gateway)
            yield gateway_url, worker_url
        finally:
            for process in (gateway, worker):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=30)
            worker_log.close()
            gateway_log.close()


def service_part(args: argparse.Namespace, report: Report) -> tuple[float, float, float, float] | None:
    import httpx

    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="mosaic-bench-gpu-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with local_stack(args, log_dir) as (gateway_url, worker_url), httpx.Client(timeout=3600) as client:
        startup_s = time.perf_counter() - started
        model = client.get(f"{worker_url}/v1/models").json()["data"][0]["id"]

        def tokenize(messages: list[dict[str, str]]) -> list[int]:
            body = {
                "model": model,
                "messages": messages,
                "add_generation_prompt": True,
                "add_special_tokens": False,
            }
            return list(client.post(f"{worker_url}/tokenize", json=body).json()["tokens"])

        from app.prompts import AdvertiserProfile, advertiser_messages, reference_messages

        reference = tokenize(chat(reference_messages(QUERY)))

        def single(seed: int) -> tuple[float, int]:
            body = {
                "model": model,
                "prompt": reference,
                "n": 1,
                "max_tokens": args.tokens,
                "seed": seed,
                "logprobs": 0,
                "return_token_ids": True,
            }
            t0 = time.perf_counter()
            response = client.post(f"{worker_url}/v1/completions", json=body)
            wall = time.perf_counter() - t0
            response.raise_for_status()
            return wall, int(response.json()["usage"]["completion_tokens"])

        def auction(m: int, advertisers: int, seed: int) -> tuple[float, dict[str, Any]]:
            body = {
                "query": QUERY,
                "advertisers": [
                    {"id": a[0], "name": a[1], "description": a[2]} for a in ADVERTISER_POOL[:advertisers]
                ],
                "candidates": m,
                "max_tokens": args.tokens,
                "seed": seed,
                "include_candidates": True,
            }
            t0 = time.perf_counter()
            response = client.post(f"{gateway_url}/auction", json=body)
            wall = time.perf_counter() - t0
            if response.status_code != 200:
                raise RuntimeError(f"auction failed: {response.status_code} {response.text[:500]}")
            return wall, response.json()

        report(
            f"[service] model={model} device={args.device} decode={args.service_decode} "
            f"prompt_tokens={len(reference)} reply_tokens={args.tokens} (WORKER_FORCE_IGNORE_EOS=1) "
            f"startup_s={startup_s:.1f} repeats={args.repeats} logs={log_dir}"
        )
        single(0)  # warm-up (and graph capture of the n=1 shapes)
        for m, advertisers in args.auctions:
            auction(m, advertisers, 0)
        singles = [single(seed) for seed in range(1, args.repeats + 1)]
        single_s = statistics.median(w for w, _ in singles)
        single_tokens = singles[0][1]
        results: list[tuple[int, int, float, dict[str, float], float, int]] = []
        params = args.params or PARAMS.get(args.model)
        peak = peak_tflops(device_name(args.device), args.peak_tflops)
        for m, advertisers in args.auctions:
            runs = [auction(m, advertisers, seed) for seed in range(1, args.repeats + 1)]
            wall = statistics.median(w for w, _ in runs)
            stages = {
                key: statistics.median(float(body["timings_ms"][key]) for _, body in runs)
                for key in runs[0][1]["timings_ms"]
            }
            lengths = [c["num_tokens"] for c in runs[0][1]["candidates"]]
            contexts = [reference] + [
                tokenize(chat(advertiser_messages(QUERY, AdvertiserProfile(name=a[1], description=a[2]))))
                for a in ADVERTISER_POOL[:advertisers]
            ]
            computed = sum(len(c) for c in contexts) + len(contexts) * sum(lengths)
            results.append((m, advertisers, wall, stages, computed, min(lengths)))

        rows = [
            [
                "one reply (worker, n=1)",
                f"{single_s:.3f}",
                "",
                "",
                "",
                f"{single_s / single_tokens * 1000:.2f}",
                "",
                "",
                "",
            ]
        ]
        for m, advertisers, wall, stages, computed, shortest in results:
            score_s = stages["score"] / 1000
            achieved = 2 * params * computed / score_s / 1e12 if params and score_s > 0 else None
            rows.append(
                [
                    f"auction M={m} n={advertisers}",
                    f"{wall:.3f}",
                    f"{stages['tokenize']:.0f}",
                    f"{stages['generate']:.0f}",
                    f"{stages['score']:.0f}",
                    f"{stages['generate'] / args.tokens:.2f}",
                    f"{computed / score_s:.0f}" if score_s > 0 else "n/a",
                    f"{100 * achieved / peak:.0f}%" if achieved is not None and peak else "n/a",
                    f"{wall / single_s:.2f}",
                ]
            )
            if shortest != args.tokens:
                report(f"WARNING: a candidate of M={m} has {shortest} tokens, not {args.tokens}")
        table(
            report,
            [
                "case",
                "wall_s",
                "tok_ms",
                "gen_ms",
                "score_ms",
                "ms/token",
                "score tok/s",
                "% peak",
                "x single",
            ],
            rows,
        )
        report(
            "stages: tok_ms/gen_ms/score_ms = gateway stage medians (tokenize, generate, score); ms/token: "
            "single = wall/tokens, auction = generate stage/tokens; score tok/s = tokens computed with the "
            "shared prefix (each context once + every reply under every context) / score stage"
        )
        for m, advertisers, _, stages, _, _ in results:
            report(
                f"  M={m} n={advertisers} stage medians (ms): "
                + json.dumps({k: round(v, 1) for k, v in stages.items()})
            )
        wall0 = results[0][2]
        return wall0, single_s, wall0 / single_s, single_s / single_tokens * 1000


def parse_auctions(text: str) -> list[tuple[int, int]]:
    cases = []
    for part in text.split(","):
        m, _, advertisers = part.partition(":")
        cases.append((int(m), int(advertisers or 2)))
    return cases


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="random-7b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per reply (ignore_eos)")
    parser.add_argument(
        "--auctions", type=parse_auctions, default=parse_auctions("20:2,64:10"), help="M:advertisers,..."
    )
    parser.add_argument("--ns", type=lambda s: [int(x) for x in s.split(",")], default=[1, 20, 64])
    parser.add_argument("--modes", type=lambda s: s.split(","), default=["legacy", "eager", "fast"])
    parser.add_argument("--engine", action="store_true", help="run the in-process decode / scoring part")
    parser.add_argument("--no-service", action="store_true", help="skip the HTTP service part")
    parser.add_argument("--service-decode", default="fast", choices=["fast", "eager", "legacy"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (CPU)")
    parser.add_argument("--score-token-budget", type=int, default=8192)
    parser.add_argument("--params", type=float, default=None, help="matmul parameters per token (FLOPs/2)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s")
    parser.add_argument("--out", default=None, help="also write the report here")
    parser.add_argument("--log-dir", default=None, help="worker / gateway logs (default: a temp dir)")
    args = parser.parse_args(argv)

    report = Report(args.out)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    report(f"# bench/gpu.py  {stamp}  device: {device_name(args.device)}")
    report(f"# python3 bench/gpu.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    try:
        import torch
        import transformers

        report(f"# torch {torch.__version__}  transformers {transformers.__version__}")
    except ImportError:
        pass
    try:
        if args.engine:
            engine_part(args, report)
            report()
            gc.collect()  # the in-process model's memory goes back before the worker loads its own
            with contextlib.suppress(ImportError):
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        if not args.no_service:
            outcome = service_part(args, report)
            if outcome is not None:
                auction_s, single_s, ratio, ms_per_token = outcome
                report(
                    f"auction_s={auction_s:.3f} single_s={single_s:.3f} ratio={ratio:.3f} "
                    f"ms_per_token={ms_per_token:.2f}"
                )
    finally:
        report.close()


if __name__ == "__main__":
    main()
