"""The in-process part of bench/gpu.py (``--engine``): decode time per step, and scoring.

One request's decode wall time for each of the worker's decode loops (``--modes``: ``legacy`` = the
transformers loop, ``eager`` = static KV cache, ``fast`` = static cache + CUDA graphs on a GPU) and
each ``--ns`` sample count; then teacher-forced scoring of an auction-shaped batch (every reply under
every context), with and without the shared-prefix prefill, with the TFLOP/s it reaches. Not a script:
bench/gpu.py calls ``engine_part``. Imports torch, app.prompts and workers (engine, models) inside it.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable
from dataclasses import replace

from bench.common import engine_config, median_time, text_table
from bench.gpu_common import ADVERTISER_POOL, PARAMS, QUERY, Report, chat, device_name, peak_tflops


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
        mode: Engine(
            loaded,
            replace(
                engine_config(), max_model_len=4096, score_token_budget=args.score_token_budget, decode=mode
            ),
        )
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
    text_table(report, ["case", "wall_s", "ms/step", "tok/s", f"vs {args.modes[0]}"], rows)
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
    text_table(report, ["case", "wall_s", "tokens", "tok/s", "TFLOP/s", "% peak"], rows)
    for engine in engines.values():
        engine.close()
    engines.clear()
    if cuda:
        torch.cuda.empty_cache()
