"""Continuous batching in the worker, in process: C concurrent auction-shaped workloads through one
engine with batching on and off, back to back in one process (the same weights, the same noise), and
the time the row-invariant products take per auction — the floor batching cannot go under.

An auction here is what the gateway sends for a paper instance (``../shared/data/instances.jsonl``,
its first 2 advertisers, M=8, 64 tokens, the default mixture proposal): the real chat prompts, one
generation request per proposal prompt (n = 4 each, seeded), then one scoring request per context
(reference, each advertiser, the context prompt) of the 8 replies.

    PYTHONPATH=$PWD .venv/bin/python bench/batching.py                       # SmolLM2, C = 1, 8
    PYTHONPATH=$PWD .venv/bin/python bench/batching.py --model tiny-random --clients 1,4

Columns: auctions/s serial and batched; in the batched run, per auction, the seconds in bf16 GEMMs
(``tiled_linear``, lm_head included) and in the fp32 attention products (``_bmm``), and
``bound/s`` = 1 / (GEMM + attention products): the most auctions/s this CPU could give at that C
even if every other op were free. Last line: `speedup_c{C}=…` (batched over serial at C),
`batched_c{C}_over_c1=…`, `products_s_c{C}=…` and `bound_c{C}=…`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from app.auction.sampler import mixture_counts
from app.evaluation.instances import Instance, load_instances
from app.prompts import AdvertiserProfile, auction_chats
from app.settings import Settings
from bench import common
from bench.common import engine_config
from workers.engine import invariant
from workers.engine.core import Engine
from workers.engine.sampling import SamplingOptions
from workers.models import load_model

DEFAULT_INSTANCES = common.REPO.parent / "shared" / "data" / "instances.jsonl"


def auction_prompts(engine: Engine, instances: list[Instance]) -> list[list[list[int]]]:
    """Per instance its tokenized prompts as the gateway builds them (its first 2 advertisers):
    reference, context (mixture), then each advertiser's."""
    out = []
    for instance in instances:
        profiles = [
            AdvertiserProfile(name=a["name"], description=a["description"], instruction=a.get("instruction"))
            for a in instance.advertisers[:2]
        ]
        out.append([engine.tokenize_chat(list(chat)) for chat in auction_chats(instance.query, profiles)])
    return out


async def auction(engine: Engine, prompts: list[list[int]], k: int, candidates: int, max_tokens: int) -> None:
    reference, context = prompts[0], prompts[1]
    from_context, from_reference = mixture_counts(candidates, Settings().mixture_context_share)
    draws = [(context, from_context), (reference, from_reference)]
    generated = await asyncio.gather(
        *(
            engine.acomplete([prompt], SamplingOptions(n=n, max_tokens=max_tokens, seed=k * 2 + i))
            for i, (prompt, n) in enumerate(draws)
            if n
        )
    )
    replies = [s.token_ids for g in generated for s in g[0].samples]
    score = SamplingOptions(n=1, max_tokens=1, seed=k)
    contexts = [reference, *prompts[2:], context]
    await asyncio.gather(*(engine.acomplete([c + r for r in replies], score, 0) for c in contexts))


@contextmanager
def timed_products() -> Iterator[dict[str, float]]:
    """Seconds spent in the invariant forward's GEMMs and attention products while the block runs."""
    spent = {"gemm": 0.0, "attention": 0.0}
    originals = {"tiled_linear": invariant.tiled_linear, "_bmm": invariant._bmm}

    def timing(fn: Callable[..., torch.Tensor], key: str) -> Callable[..., torch.Tensor]:
        def run(*args: Any) -> torch.Tensor:
            began = time.perf_counter()
            try:
                return fn(*args)
            finally:
                spent[key] += time.perf_counter() - began

        return run

    invariant.tiled_linear = timing(originals["tiled_linear"], "gemm")  # type: ignore[assignment]
    invariant._bmm = timing(originals["_bmm"], "attention")  # type: ignore[assignment]
    try:
        yield spent
    finally:
        invariant.tiled_linear = originals["tiled_linear"]  # type: ignore[assignment]
        invariant._bmm = originals["_bmm"]  # type: ignore[assignment]


async def level(
    engine: Engine, clients: int, prompts: list[list[list[int]]], args: argparse.Namespace
) -> float:
    """Auctions/s of ``clients`` closed-loop clients, each running ``--rounds`` auctions."""

    async def client(first: int) -> None:
        for k in range(first, first + args.rounds):
            await auction(engine, prompts[k % len(prompts)], k, args.candidates, args.max_tokens)

    began = time.perf_counter()
    await asyncio.gather(*(client(c * args.rounds) for c in range(clients)))
    return clients * args.rounds / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="auctions per client per level")
    parser.add_argument("--instances", type=Path, default=DEFAULT_INSTANCES)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores, the default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = Engine(load_model(args.model, "cpu", "auto"), replace(engine_config(), batching=True))
    loop = engine.batching
    if loop is None:
        sys.exit("no batch-invariant path on this machine (weights not bf16 on CPU): nothing to compare")
    prompts = auction_prompts(engine, load_instances(args.instances))
    asyncio.run(auction(engine, prompts[0], 0, args.candidates, args.max_tokens))  # warm-up
    figures: dict[str, float] = {}
    header = ["C", "serial/s", "batched/s", "ratio", "gemm s", "attn s", "bound/s"]
    rows = []
    batched_c1 = 0.0
    for clients in [int(c) for c in args.clients.split(",")]:
        engine.batching = None
        serial = asyncio.run(level(engine, clients, prompts, args))
        engine.batching = loop
        with timed_products() as spent:
            batched = asyncio.run(level(engine, clients, prompts, args))
        auctions = clients * args.rounds
        gemm, attention = spent["gemm"] / auctions, spent["attention"] / auctions
        batched_c1 = batched_c1 or batched
        rates = [f"{serial:.4f}", f"{batched:.4f}", f"{batched / serial:.2f}"]
        rows.append(
            [str(clients), *rates, f"{gemm:.2f}", f"{attention:.2f}", f"{1 / (gemm + attention):.4f}"]
        )
        print("# " + "  ".join(rows[-1]), flush=True)
        figures[f"speedup_c{clients}"] = batched / serial
        figures[f"batched_c{clients}_over_c1"] = batched / batched_c1
        figures[f"products_s_c{clients}"] = gemm + attention
        figures[f"bound_c{clients}"] = 1 / (gemm + attention)
    engine.close()
    common.text_table(print, header, rows)
    print(" ".join(f"{name}={value:.3f}" for name, value in figures.items()))


if __name__ == "__main__":
    main()
