"""What signing adds to one auction: the record's RFC 8785 digests, the salted parts and Ed25519.

Run from the repository root: ``.venv/bin/python bench/attestation.py``. Builds realistic stored
records (`AuctionRecord`, as `AuctionService` makes them: M = 8 candidates of ~64 tokens, 2 and 3
advertisers with their instructions, every figure from `app.mechanism`) and times, per auction, what
`AuctionService._persist` adds when ATTESTATION_ENABLED is on: `record.model_dump(mode="json")`,
`app.attestation.statement.attest` (canonical JSON of the record, the shared part, each candidate and
each salted part; SHA-256; one Ed25519 signature), the attestation's model, and the longer
`model_dump_json` of the signed record. Also the same digests by their definition with the
reference `rfc8785` package for every piece (`commit_slowly`), to show what the fast canonical path
(`app.attestation.canonical.Canonicaliser`, byte-identical) saves. Prints a table of p50 and
p99 µs, then ``attest_us_p50_n3_m8=<number>`` last. See docs/DESIGN.md § Verifiable auctions.
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
    response = auction_response(
        resolved,
        participants,
        auction_id=auction_id,
        seed=seed,
        currency="USD",
        timings=timings,
        billing="billed",
    )
    event = make_billing_event(auction_id, resolved.payments(ids), "USD")
    return auction_record(response, candidate_records(resolved, ids), participants, event)


def _signed(record: AuctionRecord, signer: SigningKey) -> str:
    """What `_persist` does with signing on: dump, attest, attach, serialise."""
    record = record.model_copy()
    record.attestation = RecordAttestation.model_validate(attest(record.model_dump(mode="json"), signer))
    return record.model_dump_json()


def _reference(record: dict[str, Any], salts: dict[str, str]) -> object:
    return commit_slowly(record, salts, rfc8785.dumps)


def _time(work: Callable[[Any], object], records: list[Any], repeats: int) -> list[float]:
    samples = []
    gc.disable()
    try:
        for index in range(repeats):
            record = records[index % len(records)]
            begin = time.perf_counter()
            work(record)
            samples.append((time.perf_counter() - begin) * 1e6)
    finally:
        gc.enable()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3000)
    args = parser.parse_args()
    signer = SigningKey(Ed25519PrivateKey.generate())
    rows, last = [], 0.0
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
        medians = {}
        for name, (work, inputs) in cases.items():
            _time(work, inputs, 200)  # warm-up
            samples = sorted(_time(work, inputs, args.repeats))
            medians[name] = statistics.median(samples)
            rows.append(
                [f"n={n}, M=8", name, f"{medians[name]:.0f}", f"{samples[int(0.99 * len(samples))]:.0f}"]
            )
        added = (
            medians["signed: dump + attest + model_dump_json"]
            - medians["unsigned: model_dump_json (as before)"]
        )
        rows.append([f"n={n}, M=8", "added per auction (signed − unsigned)", f"{added:.0f}", ""])
        last = added
    rich_table("What signing adds per auction (µs)", ["record", "step", "p50 µs", "p99 µs"], rows, left=2)
    print(f"attest_us_p50_n3_m8={last:.0f}")


if __name__ == "__main__":
    main()
