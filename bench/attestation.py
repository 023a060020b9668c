"""What signing adds to one auction: the record's RFC 8785 digests, the salted parts and Ed25519.

Run from the repository root: ``.venv/bin/python bench/attestation.py``. Builds realistic stored
records (`AuctionRecord`, as `AuctionService` makes them: M = 8 candidates of ~64 tokens, 2 and 3
advertisers with their instructions, every figure from `app.mechanism`) and times, per auction, what
`AuctionService._persist` adds when ATTESTATION_ENABLED is on: `record.model_dump(mode="json")`,
`app.attestation.statement.attest` (canonical JSON of the record, the shared part, each candidate and
each salted part; SHA-256; one Ed25519 signature), the attestation's model, and the longer
`model_dump_json` of the signed record. Also the same digests by their definition with the
reference `rfc8785` package for every piece (`commit_slowly`), to show what the fast canonical path
(`app.attestation.canonical.Canonicaliser`, byte-identical) saves. Prints a table of wall and
thread-CPU p50 µs and wall p99, then ``attest_us_p50_n3_m8=<wall> attest_cpu_us_p50_n3_m8=<cpu>`` last.

    .venv/bin/python bench/attestation.py --gateway [--model tiny-random] [--repeats 200]

`--gateway`: the same through HTTP (bench/signing_pairs.py) — one worker (one torch thread unless
WORKER_TORCH_THREADS says otherwise) and two gateways in front of it, started alike, each with its
embedded Redis: B with the defaults of `make serve` (signed, the sequencer on), A with
ATTESTATION_ENABLED=false. Auctions in pairs (same seed, M = 8, 64 tokens unless told, two advertisers),
which of A and B goes first drawn by a seeded shuffle with exactly half each: on a 2-core machine the
first and the second auction of a pair differ by up to ±1 ms (the median of first − second ranged −1.0
to +0.6 ms over six runs: the first's aftermath — its billing consumer waking, Redis' fsync — meets the
second), and a fixed order would put that on one side. Gateway overhead = client wall time − wall time
with a worker request in flight. `--aa`: A runs B's settings too (an A/A run: the paired difference is
the bench's own error, ≈ 0); `--set NAME=VALUE` a setting of both, `--set-a NAME=VALUE` of A only (with
--aa: what that setting costs, e.g. `--set-a TRANSPARENCY_SEQUENCER=false`); `--repo-a DIR` runs A from
another checkout (old vs new code in one run). Last line: `overhead_ms_p50_a=<ms> overhead_ms_p50_b=<ms>
order_effect_ms_p50=<ms> signing_added_ms_p50=<ms> ci95=[lo,hi]` (`aa_difference_ms_p50` with --aa): the
median of the paired differences B − A and its 95% bootstrap interval. It also prints each gateway's CPU
per auction (the gateway and its embedded Redis, from /proc, background work such as the sequencer
included): on a loaded machine the wall-clock difference swells with the load (a preempted gateway
waits), the CPU difference much less. `bench/latency.py --signing ...` runs the same. See docs/DESIGN.md
§ Verifiable auctions.
"""

from __future__ import annotations

import argparse
import functools
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app import mechanism
from app.attestation.commitments import commit_slowly, new_salt
from app.attestation.keys import SigningKey
from app.attestation.statement import attest
from app.auction.engine_client import GeneratedCandidate
from app.auction.result import ResolvedAuction, auction_record, auction_response, candidate_records
from app.auction.sampler import CandidateSet, ScoredCandidates
from app.campaigns.participants import Participants
from app.contract.attestation import RecordAttestation
from app.contract.request import AdvertiserIn, AuctionRequest
from app.contract.result import AuctionRecord, AuctionTimings
from app.ledger.events import make_billing_event
from bench.common import rich_table
from bench.signing_pairs import add_pair_arguments, gateway_overhead

WORDS = [
    "the",
    "guitar",
    "is",
    "a",
    "fretted",
    "string",
    "instrument",
    "with",
    "six",
    "strings",
    "you",
    "learn",
    "chords",
    "and",
    "scales",
]


def _text(rng: np.random.Generator, tokens: int = 64) -> str:
    """About `tokens` tokens of English (a word is ~1.3 tokens; punctuation included)."""
    words = [str(rng.choice(WORDS)) for _ in range(int(tokens / 1.3))]
    return " ".join(words).capitalize() + "."


def make_record(n: int, m: int, seed: int) -> AuctionRecord:
    """A stored record built by `app.auction.result` (what `AuctionService._build_result` calls) from
    random scores: M candidates of 64 tokens, n advertisers with their instructions."""
    rng = np.random.default_rng(seed)
    scales = rng.uniform(0.01, 0.1, n)
    log_ref = rng.normal(-60, 12, m)
    log_q = log_ref + rng.normal(0, 3, m)
    log_advertisers = log_ref + rng.normal(0, 6, (n, m))
    candidates = [GeneratedCandidate(list(range(64)), _text(rng), "length", float(q)) for q in log_q]
    scored = ScoredCandidates(
        CandidateSet(candidates, ["context"] * m, 1.0), log_ref, log_advertisers, log_q, None
    )
    rewards = mechanism.rewards_from_logprobs(log_advertisers, log_ref, scales)
    resolved = ResolvedAuction(scored, rewards, mechanism.run_auction(rewards, log_ref, log_q, 1.0, rng))
    ids = [f"advertiser-{i}" for i in range(n)]
    advertisers = [
        AdvertiserIn(
            id=aid,
            name=f"Brand {i}",
            description="guitars, tuners and lessons for beginners",
            instruction=f"Mention Brand {i} and its beginner bundle where it helps.",
            value_scale=float(scales[i]),
        )
        for i, aid in enumerate(ids)
    ]
    participants = Participants(AuctionRequest(query="Learning to play the guitar.", advertisers=advertisers))
    auction_id = f"{seed:032x}"
    timings = AuctionTimings(
        tokenize=1, generate=812, score=95, mechanism=0.08, billing=0, total=911, workers=905
    )
    event = make_billing_event(auction_id, resolved.payments(ids), "USD")
    response = auction_response(
        resolved,
        participants,
        auction_id=auction_id,
        seed=seed,
        currency="USD",
        timings=timings,
        billing="billed",
        payments_micro=event.payments_micro,
    )
    return auction_record(response, candidate_records(resolved, ids), participants, event)


def _signed(record: AuctionRecord, signer: SigningKey) -> str:
    """What `_persist` does with signing on: dump, attest, attach, serialise (the record is reused:
    its previous attestation is dropped first, as a record reaches `_persist` without one)."""
    record.attestation = None
    record.attestation = RecordAttestation.model_validate(attest(record.model_dump(mode="json"), signer))
    return record.model_dump_json()


def _reference(record: dict[str, Any], salts: dict[str, str]) -> object:
    return commit_slowly(record, salts, rfc8785.dumps)


def _time(work: Callable[[Any], object], records: list[Any], repeats: int) -> tuple[list[float], list[float]]:
    """Wall and thread-CPU µs of each call (the CPU time is what the gateway's event loop pays; the
    wall time also counts the preemptions of a busy machine)."""
    wall, cpu = [], []
    gc.disable()
    try:
        for index in range(repeats):
            record = records[index % len(records)]
            begin, begin_cpu = time.perf_counter(), time.thread_time()
            work(record)
            cpu.append((time.thread_time() - begin_cpu) * 1e6)
            wall.append((time.perf_counter() - begin) * 1e6)
    finally:
        gc.enable()
    return wall, cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3000)
    parser.add_argument("--gateway", action="store_true", help="signed vs unsigned gateways, interleaved")
    parser.add_argument("--model", default="tiny-random", help="the worker's model (with --gateway)")
    parser.add_argument("--candidates", type=int, default=8, help="M (with --gateway)")
    parser.add_argument("--max-tokens", type=int, default=64, help="reply length (with --gateway)")
    add_pair_arguments(parser)
    args = parser.parse_args(argv)
    if args.gateway:
        gateway_overhead(args)
        return
    signer = SigningKey(Ed25519PrivateKey.generate())
    rows: list[list[str]] = []
    last = (0.0, 0.0)
    for n in (2, 3):
        records = [make_record(n, 8, seed) for seed in range(32)]
        dumped = [r.model_dump(mode="json") for r in records]
        salts = {f"advertiser-{i}": new_salt() for i in range(n)}
        cases: dict[str, tuple[Callable[[Any], object], list[Any]]] = {
            "unsigned: model_dump_json (as before)": (lambda r: r.model_dump_json(), records),
            "signed: dump + attest + model_dump_json": (lambda r: _signed(r, signer), records),
            "attest (digests + Ed25519)": (lambda d: attest(d, signer), dumped),
            "digests by definition, rfc8785 (reference)": (
                functools.partial(_reference, salts=salts),
                dumped,
            ),
            "Ed25519 sign of 600 bytes": (lambda _: signer.sign(b"x" * 600), dumped),
        }
        medians: dict[str, tuple[float, float]] = {}
        for name, (work, inputs) in cases.items():
            _time(work, inputs, 200)  # warm-up
            wall, cpu = _time(work, inputs, args.repeats)
            medians[name] = (statistics.median(wall), statistics.median(cpu))
            p99 = sorted(wall)[int(0.99 * len(wall))]
            rows.append([f"n={n}, M=8", name, *(f"{v:.0f}" for v in (*medians[name], p99))])
        signed, unsigned = (
            medians["signed: dump + attest + model_dump_json"],
            medians["unsigned: model_dump_json (as before)"],
        )
        added = (signed[0] - unsigned[0], signed[1] - unsigned[1])
        rows.append(
            [f"n={n}, M=8", "added per auction (signed − unsigned)", f"{added[0]:.0f}", f"{added[1]:.0f}", ""]
        )
        last = added
    header = ["record", "step", "wall p50 µs", "CPU p50 µs", "wall p99 µs"]
    rich_table("What signing adds per auction (µs)", header, rows, left=2)
    print(f"attest_us_p50_n3_m8={last[0]:.0f} attest_cpu_us_p50_n3_m8={last[1]:.0f}")


if __name__ == "__main__":
    main()
