"""What re-scoring adds to a stored auction record (issue 35): bytes and serialisation time.

A synthetic `AuctionRecord` of a SmolLM2-sized auction (M candidates, n advertisers, T tokens per
reply, ~5 characters per token of text) is serialised as the gateway stores it
(`model_dump_json`), without and with what re-scoring needs: each candidate's `token_ids`, her raw
`log_context` per advertiser, and the record's `engine` (this machine's identity of a tiny-random
worker: `workers.identity.engine_identity`). Prints the bytes and the median time of each.

    .venv/bin/python bench/record_size.py                      # M=8, n=3, T=64
    .venv/bin/python bench/record_size.py --candidates 16 --advertisers 5 --tokens 128

Last line: ``bytes_before=<B> bytes_after=<B> added=<B> dump_us_before=<us> dump_us_after=<us>``.
See docs/DESIGN.md § Verifiable auctions.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def record(extra: bool, args: argparse.Namespace, identity: dict[str, object]) -> object:
    from app.contract.disclosure import disclose
    from app.contract.engine import EngineIdentity, EngineRecord
    from app.contract.result import AdvertiserResult, AuctionRecord, AuctionTimings, CandidateRecord

    rng = random.Random(1)
    ids = [f"advertiser-{i}" for i in range(args.advertisers)]
    rows = [
        CandidateRecord(
            text="word " * args.tokens,
            log_ref=rng.uniform(-200, -50),
            log_proposal=rng.uniform(-200, -50),
            rewards={a: rng.uniform(-5, 5) for a in ids},
            probability=rng.random(),
            proposal="context",
            num_tokens=args.tokens,
            finish_reason="length",
            token_ids=[rng.randrange(49152) for _ in range(args.tokens)] if extra else None,
            log_context={a: rng.uniform(-200, -50) for a in ids} if extra else None,
        )
        for _ in range(args.candidates)
    ]
    groups, m = args.advertisers + 2, args.candidates
    engine = EngineRecord(
        identities=[EngineIdentity(id="ab" * 32, identity=identity)],
        max_tokens=args.tokens,
        generated=[[0, 0, 0, m - m // 4], [0, 0, m - m // 4, m]],
        scored=[[0, g * m, (g + 1) * m] for g in range(groups)],
    )
    return AuctionRecord(
        auction_id="f" * 32,
        reply="word " * args.tokens,
        disclosure=disclose(((a, a) for a in ids), {a: 1 for a in ids}, auction_id="f" * 32),
        chosen_index=0,
        tau=1.5,
        proposal="mixture",
        seed=1,
        currency="USD",
        advertisers=[
            AdvertiserResult(id=a, payment=0.1, expected_reward=0.2, expected_utility=0.1) for a in ids
        ],
        revenue=0.3,
        effective_sample_size=2.0,
        timings_ms=AuctionTimings(
            tokenize=1, generate=1, score=1, mechanism=1, billing=1, total=1, workers=1
        ),
        candidates=rows,
        request={
            "query": "q" * 100,
            "advertisers": [{"id": a, "name": a, "description": "d" * 80} for a in ids],
        },
        created_at_ms=1,
        payments_micro={a: 1 for a in ids},
        engine=engine if extra else None,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--advertisers", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2000)
    args = parser.parse_args()
    from workers.identity import engine_identity
    from workers.server import load_engine

    identity = engine_identity(load_engine("tiny-random", "cpu"))
    figures = []
    for extra in (False, True):
        built = record(extra, args, identity)
        dump = built.model_dump_json  # type: ignore[attr-defined]
        times = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(args.repeats // 5):
                text = dump()
            times.append((time.perf_counter() - started) / (args.repeats // 5))
        figures.append((len(text.encode()), sorted(times)[2] * 1e6))
        print(
            f"{'with' if extra else 'without'} re-scoring fields: {figures[-1][0]} B, {figures[-1][1]:.1f} us"
        )
    (before, us_before), (after, us_after) = figures
    print(
        f"bytes_before={before} bytes_after={after} added={after - before} "
        f"dump_us_before={us_before:.1f} dump_us_after={us_after:.1f}"
    )


if __name__ == "__main__":
    main()
