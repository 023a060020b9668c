"""Worker engine benchmark: n samples in one batched request vs one reply, and scoring throughput.

Runs the transformers engine in process (the same code the worker serves), so the figures are the
model work itself: prefill once, decode the n samples together with a KV cache.

    .venv/bin/python bench/worker.py                                  # SmolLM2, CPU, 64 tokens, n=8
    .venv/bin/python bench/worker.py --dtype float32                  # the same in fp32
    .venv/bin/python bench/worker.py --model random-7b --device cuda  # 7B shapes, bf16, 256 tok, n=20

Every reply decodes exactly ``--tokens`` tokens (``ignore_eos``). Scoring: a batch of
``--score-batch`` sequences (chat prompt ++ a sampled reply), with and without shared-prefix prefill.
Last line: ``n8_over_n1=<ratio>`` (GPU mode prints ``n20_over_n1=<ratio>`` just before it).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.common import engine_config, median_time
from workers.engine.core import Engine
from workers.engine.sampling import SamplingOptions
from workers.models import load_model

QUESTION = "Give me three tips for learning to play the guitar, with a short reason for each."


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", default="smollm2", help="smollm2, tiny-random, random-7b or a local HF dir"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--tokens", type=int, default=None, help="tokens per reply (default 64; 256 on GPU)")
    parser.add_argument(
        "--n", type=int, default=None, help="samples in the batched request (default 8; 20 on GPU)"
    )
    parser.add_argument(
        "--dtype",
        default=os.environ.get("WORKER_DTYPE", "auto"),
        choices=["auto", "float32", "bfloat16"],
        help="weights (auto: bf16 on CUDA and on CPUs with native bf16)",
    )
    parser.add_argument("--score-batch", type=int, default=24, help="sequences in the scoring batch")
    parser.add_argument("--score-token-budget", type=int, default=8192, help="padded tokens per scoring pass")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per case (median)")
    parser.add_argument(
        "--threads", type=int, default=int(os.environ.get("WORKER_TORCH_THREADS", "0")), help="torch threads"
    )
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    load_start = time.perf_counter()
    loaded = load_model(args.model, args.device, args.dtype)
    load_s = time.perf_counter() - load_start
    gpu = loaded.device.type == "cuda"
    sync = torch.cuda.synchronize if gpu else None
    tokens = args.tokens or (256 if gpu else 64)
    big_n = args.n or (20 if gpu else 8)
    engine = Engine(
        loaded, replace(engine_config(), max_model_len=4096, score_token_budget=args.score_token_budget)
    )
    prompt = engine.tokenize_chat([{"role": "user", "content": QUESTION}])

    def generate(n: int, max_tokens: int = tokens, seed: int = 1) -> list[list[int]]:
        options = SamplingOptions(n=n, max_tokens=max_tokens, temperature=1.0, seed=seed, ignore_eos=True)
        return [s.token_ids for s in engine.complete([prompt], options)[0].samples]

    generate(2, 4)  # warm-up (kernels, allocator)
    ns = sorted({1, 8, big_n})
    wall = {n: median_time(functools.partial(generate, n), args.repeats, sync) for n in ns}

    replies: list[list[int]] = []
    while len(replies) < args.score_batch:
        replies += generate(min(8, args.score_batch - len(replies)), seed=len(replies) + 7)
    sequences = [prompt + r for r in replies]
    scored_tokens = sum(len(s) for s in sequences)
    engine.prefix_sharing = False
    score_plain = median_time(lambda: engine.score(sequences), args.repeats, sync)
    engine.prefix_sharing = True
    score_shared = median_time(lambda: engine.score(sequences), args.repeats, sync)

    threads = torch.get_num_threads()
    print(
        f"model={loaded.name} device={loaded.device} dtype={str(loaded.dtype).removeprefix('torch.')} "
        f"threads={threads} load_s={load_s:.1f} prompt_tokens={len(prompt)} reply_tokens={tokens}"
    )
    header = f"{'case':<34}{'wall_s':>10}{'tokens':>9}{'tok/s':>10}{'vs n=1':>9}"
    print(header)
    print("-" * len(header))
    for n in ns:
        generated = n * tokens
        print(
            f"{f'generate n={n} ({tokens} tok each)':<34}{wall[n]:>10.3f}{generated:>9d}"
            f"{generated / wall[n]:>10.1f}{wall[n] / wall[1]:>8.2f}x"
        )
    for label, seconds in (
        ("score batch, plain padded", score_plain),
        ("score batch, shared prefix", score_shared),
    ):
        print(
            f"{f'{label} ({len(sequences)} seqs)':<34}{seconds:>10.3f}{scored_tokens:>9d}"
            f"{scored_tokens / seconds:>10.1f}{'':>9}"
        )
    if big_n not in (1, 8):
        print(f"n{big_n}_over_n1={wall[big_n] / wall[1]:.3f}")
    print(f"n8_over_n1={wall[8] / wall[1]:.3f}")


if __name__ == "__main__":
    main()
