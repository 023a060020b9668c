"""Continuous batching in the worker, in process: C concurrent auction-shaped workloads (one generation
request n=M × max_tokens, then one scoring request of M replies per context, as the gateway sends them)
through one engine with batching on and off, back to back in one process (the same weights, the same
noise), plus the cost of the step kinds that bound the speedup.

    PYTHONPATH=$PWD .venv/bin/python bench/batching.py                       # SmolLM2, C = 1, 4, 8
    PYTHONPATH=$PWD .venv/bin/python bench/batching.py --model tiny-random --clients 1,4

Last line: `speedup_c{C}=…` (batched throughput at C over serial throughput at C) and
`batched_c{C}_over_c1=…` (batched throughput at C over batched at 1).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from workers.engine.core import Engine
from workers.engine.sampling import SamplingOptions
from workers.models import load_model


async def auction(engine: Engine, k: int, candidates: int, max_tokens: int, contexts: int) -> None:
    context = engine.tokenize_text(f"Auction {k}: tell me about guitars and learning to play them. " * 3)
    options = SamplingOptions(n=candidates, max_tokens=max_tokens, seed=k, ignore_eos=True)
    generated = await engine.acomplete([context], options)
    replies = [s.token_ids for s in generated[0].samples]
    score = SamplingOptions(n=1, max_tokens=1, seed=k)
    prompts = [[*context[: len(context) - c], *reply] for c in range(contexts) for reply in replies]
    await asyncio.gather(
        *(engine.acomplete(prompts[c * candidates : (c + 1) * candidates], score, 0) for c in range(contexts))
    )


async def level(engine: Engine, clients: int, args: argparse.Namespace) -> float:
    """Auctions/s of ``clients`` closed-loop clients, each running ``--rounds`` auctions."""

    async def client(first: int) -> None:
        for k in range(first, first + args.rounds):
            await auction(engine, k, args.candidates, args.max_tokens, args.contexts)

    began = time.perf_counter()
    await asyncio.gather(*(client(c * args.rounds) for c in range(clients)))
    return clients * args.rounds / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--clients", default="1,4,8")
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--contexts", type=int, default=3, help="scoring prompts (reference + advertisers)")
    parser.add_argument("--rounds", type=int, default=2, help="auctions per client per level")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engine = Engine(load_model(args.model, "cpu", "auto"), batching=True)
    loop = engine.batching
    if loop is None:
        sys.exit("no batch-invariant path on this machine (weights not bf16 on CPU): nothing to compare")
    asyncio.run(auction(engine, 0, args.candidates, args.max_tokens, args.contexts))  # warm-up
    figures: dict[str, float] = {}
    print(f"{'C':>3} {'serial/s':>10} {'batched/s':>10} {'ratio':>7}")
    batched_c1 = 0.0
    for clients in [int(c) for c in args.clients.split(",")]:
        engine.batching = None
        serial = asyncio.run(level(engine, clients, args))
        engine.batching = loop
        batched = asyncio.run(level(engine, clients, args))
        batched_c1 = batched_c1 or batched
        print(f"{clients:>3} {serial:>10.4f} {batched:>10.4f} {batched / serial:>7.2f}", flush=True)
        figures[f"speedup_c{clients}"] = batched / serial
        figures[f"batched_c{clients}_over_c1"] = batched / batched_c1
    engine.close()
    print(" ".join(f"{name}={value:.3f}" for name, value in figures.items()))


if __name__ == "__main__":
    main()
