"""The service part of bench/gpu.py (the default): one reply vs full auctions through HTTP.

Starts a worker (``python -m workers.server``, ``WORKER_FORCE_IGNORE_EOS=1`` so every reply decodes
exactly ``--tokens``; ``WORKER_DECODE=--service-decode``) and a gateway (embedded Redis, limits raised
for the cases asked) with bench.common.local_stack, logs in ``--log-dir``; times one reply
(``/v1/completions``, n=1) and auctions (``POST /auction``) for each ``--auctions`` ``M:advertisers``,
with the gateway's stage medians. Not a script: bench/gpu.py calls ``service_part``. Imports httpx and
app.prompts inside it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, local_stack, text_table
from bench.gpu_common import ADVERTISER_POOL, PARAMS, QUERY, Report, chat, device_name, peak_tflops


def service_stack(
    args: argparse.Namespace, log_dir: Path
) -> contextlib.AbstractContextManager[tuple[str, str]]:
    """The worker and gateway this part times; (gateway_url, worker_url)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "LOG_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    worker_env = {
        "WORKER_FORCE_IGNORE_EOS": "1",
        "WORKER_DECODE": args.service_decode,
        "WORKER_MAX_MODEL_LEN": "4096",
    }
    if args.threads:
        worker_env["WORKER_TORCH_THREADS"] = str(args.threads)
    gateway_env = {
        "AUCTION_DEADLINE_S": "3600",
        "WORKER_TIMEOUT_S": "3600",
        "MAX_TOKENS_LIMIT": str(max(512, args.tokens)),
        "MAX_CANDIDATES": str(max(64, *(m for m, _ in args.auctions))),
        "MAX_ADVERTISERS": str(max(16, *(a for _, a in args.auctions))),
    }
    return local_stack(
        args.model,
        ["--device", args.device],
        env,
        worker_env,
        gateway_env,
        ready_timeout_s=900,
        stop_timeout_s=30,
        log_dir=log_dir,
    )


def service_part(args: argparse.Namespace, report: Report) -> tuple[float, float, float, float] | None:
    import httpx

    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="mosaic-bench-gpu-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with service_stack(args, log_dir) as (gateway_url, worker_url), httpx.Client(timeout=3600) as client:
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
        text_table(
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
