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

`--gateway`: the same through HTTP — one worker (one torch thread unless WORKER_TORCH_THREADS says
otherwise) and two gateways in front of it, started alike, each with its embedded Redis: B with the
defaults of `make serve` (signed, the sequencer on), A with ATTESTATION_ENABLED=false. Auctions in
pairs (same seed, M = 8, 64 tokens unless told, two advertisers), which of A and B goes first drawn by
a seeded shuffle with exactly half each: on a 2-core machine the first and the second auction of a
pair differ by up to ±1 ms (the median of first − second ranged −1.0 to +0.6 ms over six runs: the
first's aftermath — its billing consumer waking, Redis' fsync — meets the second), and a fixed order
would put that on one side. Gateway overhead = client wall time − wall time with a worker
request in flight. `--aa`: A runs B's settings too (an A/A run: the paired difference is the bench's
own error, ≈ 0); `--set NAME=VALUE` a setting of both, `--set-a NAME=VALUE` of A only (with --aa:
what that setting costs, e.g. `--set-a TRANSPARENCY_SEQUENCER=false`); `--repo-a DIR` runs A from
another checkout (old vs new code in one run). Last line: `overhead_ms_p50_a=<ms>
overhead_ms_p50_b=<ms> order_effect_ms_p50=<ms> signing_added_ms_p50=<ms> ci95=[lo,hi]`
(`aa_difference_ms_p50` with --aa): the median of the paired differences B − A and its 95% bootstrap
interval. It also prints each gateway's CPU per auction (the gateway and its embedded Redis, from
/proc, background work such as the sequencer included): on a loaded machine the wall-clock
difference swells with the load (a preempted gateway waits), the CPU difference much less.
`bench/latency.py --signing ...` runs the same. See docs/DESIGN.md § Verifiable auctions.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tqdm import tqdm

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
from bench import common
from bench.common import rich_table
from bench.latency import overhead_table

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


GATEWAY_ADVERTISERS = [
    {
        "id": "strummaster",
        "name": "StrumMaster",
        "description": "selling guitars, tuners, and learning materials",
    },
    {"id": "chordify", "name": "Chordify", "description": "offering online guitar lessons"},
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


@contextlib.contextmanager
def _process(argv: list[str], env: dict[str, str], ready_url: str, cwd: Path = common.REPO) -> Iterator[None]:
    """`argv` in its own session with `env`, ready when `ready_url` answers 200; SIGTERM'd on exit."""
    process = subprocess.Popen(argv, cwd=cwd, env=env, start_new_session=True)
    try:
        common.wait_ready(ready_url, process, 300)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


@contextlib.contextmanager
def _worker(model: str) -> Iterator[str]:
    """One worker (`python -m workers.server --model`) on a free loopback port: its URL."""
    port = common.free_port()
    argv = [sys.executable, "-m", "workers.server", "--model", model, "--port", str(port)]
    # one torch thread unless told: on a crowded machine a worker's spinning threads slow the gateways
    # whose overhead is measured (the worker's own time is subtracted either way)
    env = {"LOG_LEVEL": "WARNING", "WORKER_TORCH_THREADS": os.environ.get("WORKER_TORCH_THREADS", "1")}
    with _process(argv, {**os.environ, **env}, f"http://127.0.0.1:{port}/health"):
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def _gateway(
    worker_url: str, settings: dict[str, str], repo: Path = common.REPO
) -> Iterator[tuple[str, int]]:
    """A gateway (`mosaic serve` of the checkout `repo`, its own embedded Redis in a temp dir, the
    defaults of `make serve` plus `settings`) in front of `worker_url`: its URL. Both gateways of a
    comparison start here, the same way, so they differ only by `settings` (and `repo`). Yields
    (URL, pid)."""
    port = common.free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        env = {**os.environ, "LOG_LEVEL": "WARNING", "WORKER_URLS": worker_url, "PORT": str(port)}
        env |= {"DATA_DIR": data_dir, **settings}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))
        env.pop("REDIS_URL", None)
        url = f"http://127.0.0.1:{port}"
        with _process([sys.executable, "-m", "app.cli", "serve"], env, url + "/readyz", cwd=repo) as pid:
            yield url, pid


# What each gateway of `--signing` runs with: B (signed: the defaults) vs A (ATTESTATION_ENABLED=false);
# with --aa both run B's settings, so the paired difference measures the bench alone (must be ≈ 0).
SIGNED: dict[str, str] = {}
UNSIGNED = {"ATTESTATION_ENABLED": "false"}


def pair_order(repeats: int, seed: int = 35) -> list[bool]:
    """Which variant goes first in each pair: a seeded shuffle with exactly half of each, so an order
    effect (the first auction of a pair meets a colder cache, the other gateway's billing consumer
    waking) weighs on both variants alike, and no period of the machine lines up with one order."""
    order = [index % 2 == 0 for index in range(repeats)]
    random.Random(seed).shuffle(order)
    return order


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of process `pid` and its children (a gateway and its embedded
    Redis), from /proc (Linux; 0.0 elsewhere)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(stat.parent.name) == pid or int(fields[1]) == pid:  # fields[1]: the parent's pid
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def shuffled_pairs(
    one: Callable[[int, bool], float],
    repeats: int,
    desc: str,
    warmup: int = 10,
    started: Callable[[], None] | None = None,
) -> tuple[dict[bool, list[float]], list[bool]]:
    """`one(repeat, variant)` for both variants per repeat, in `pair_order` (after `warmup` untimed
    pairs, then `started()`): the values by variant, index-aligned for paired differences, and the
    order (True: the variant True went first)."""
    for repeat in range(warmup):
        one(repeat, repeat % 2 == 0)
        one(repeat, repeat % 2 != 0)
    if started is not None:
        started()
    values: dict[bool, list[float]] = {False: [], True: []}
    order = pair_order(repeats)
    for repeat, first in enumerate(tqdm(order, desc=desc)):
        values[first].append(one(repeat, first))
        values[not first].append(one(repeat, not first))
    return values, order


def add_pair_arguments(parser: argparse.ArgumentParser) -> None:
    """--aa and --set, for the two-gateway comparison (here and `bench/latency.py --signing`)."""
    parser.add_argument(
        "--aa",
        action="store_true",
        help="A/A: both gateways signed (the same settings); the paired difference must come out ≈ 0",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for both gateways (e.g. TRANSPARENCY_SEQUENCER=false); repeatable",
    )
    parser.add_argument(
        "--set-a",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for gateway A only (with --aa: what that setting costs B); repeatable",
    )
    parser.add_argument(
        "--repo-a",
        metavar="DIR",
        help="gateway A runs the code of this checkout (e.g. `git worktree add` of the commit before a "
        "change): with --aa, old vs new code in one interleaved run",
    )


def _settings(items: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in items)


def gateway_overhead(args: argparse.Namespace) -> None:
    """Pairs (B, A) through two gateways over one worker, in a shuffled balanced order: B signed, A
    unsigned (`--aa`: A signed too). Prints the paired difference B − A, the order effect (first −
    second of each pair) that the balanced order cancels, and the in-body figures of each (the
    reply's timings_ms: total − workers, and the billing write)."""
    # SIGTERM (a `timeout`) unwinds the context managers, so the worker and gateways are stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    settings_b = {**SIGNED, **_settings(args.set)}
    settings_a = {**(settings_b if args.aa else {**UNSIGNED, **_settings(args.set)}), **_settings(args.set_a)}
    payload: dict[str, Any] = {"query": "Learning to play the guitar.", "advertisers": GATEWAY_ADVERTISERS}
    payload |= {"candidates": args.candidates, "max_tokens": args.max_tokens}
    in_body: dict[str, list[float]] = {}
    with (
        _worker(args.model) as worker_url,
        _gateway(worker_url, settings_a, Path(args.repo_a or common.REPO)) as (url_a, pid_a),
        _gateway(worker_url, settings_b) as (url_b, pid_b),
        httpx.Client(timeout=900) as client,
    ):

        def one(repeat: int, is_b: bool) -> float:
            started = time.perf_counter()
            answer = client.post(f"{url_b if is_b else url_a}/auction", json={**payload, "seed": repeat})
            wall_ms = (time.perf_counter() - started) * 1000
            answer.raise_for_status()
            timings = answer.json()["timings_ms"]
            variant, in_body_ms = "B" if is_b else "A", timings["total"] - timings["workers"]
            in_body.setdefault(f"{variant} in-body: total − workers", []).append(in_body_ms)
            in_body.setdefault(f"{variant} in-body: billing write", []).append(timings["billing"])
            return wall_ms - float(timings["workers"])

        cpu: dict[str, float] = {}

        def snapshot() -> None:
            cpu.update(a=-process_cpu_s(pid_a), b=-process_cpu_s(pid_b))

        overhead, order = shuffled_pairs(
            one, args.repeats, "A/A" if args.aa else "signed and unsigned", started=snapshot
        )
        cpu_ms = {  # per auction: CPU of the gateway and its Redis, background work included
            "a": (cpu["a"] + process_cpu_s(pid_a)) * 1000 / args.repeats,
            "b": (cpu["b"] + process_cpu_s(pid_b)) * 1000 / args.repeats,
        }
    added = [b - a for b, a in zip(overhead[True], overhead[False], strict=True)]
    order_effect = [d if b_first else -d for d, b_first in zip(added, order, strict=True)]
    label = "A/A: B − A, same settings (paired)" if args.aa else "added by signing (paired)"
    rows = [
        (f"A {settings_a or '(defaults)'}{' ' + args.repo_a if args.repo_a else ''}", overhead[False]),
        (f"B {settings_b or '(defaults)'}", overhead[True]),
        (label, added),
        ("order effect: first − second of a pair", order_effect),
        *sorted(in_body.items()),
    ]
    overhead_table(args, rows)
    print(
        f"CPU per auction, gateway + its Redis (background work included): A {cpu_ms['a']:.3f} ms, "
        f"B {cpu_ms['b']:.3f} ms, B − A {cpu_ms['b'] - cpu_ms['a']:.3f} ms"
    )
    low, high = median_interval(added)
    name = "aa_difference_ms_p50" if args.aa else "signing_added_ms_p50"
    print(
        f"overhead_ms_p50_a={statistics.median(overhead[False]):.3f} "
        f"overhead_ms_p50_b={statistics.median(overhead[True]):.3f} "
        f"order_effect_ms_p50={statistics.median(order_effect):.3f} {name}={statistics.median(added):.3f} "
        f"ci95=[{low:.3f},{high:.3f}] cpu_ms_per_auction_b_minus_a={cpu_ms['b'] - cpu_ms['a']:.3f}"
    )


def median_interval(values: list[float], resamples: int = 2000, seed: int = 35) -> tuple[float, float]:
    """A 95% bootstrap interval of the median of `values` (percentile method): on a shared machine the
    paired differences spread over milliseconds, and this says how far their median can be trusted."""
    rng = np.random.default_rng(seed)
    data = np.asarray(values)
    medians = np.median(rng.choice(data, size=(resamples, len(data)), replace=True), axis=1)
    return float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


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
