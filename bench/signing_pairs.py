"""Signed vs unsigned gateways in paired auctions: `bench/attestation.py --gateway` and
`bench/latency.py --signing` (issue 35).

Job: start one worker and two gateways alike (`mosaic serve`, each with its embedded Redis; B with
`make serve`'s defaults, A with ATTESTATION_ENABLED=false, or B's settings with --aa), run auctions in
pairs in a seeded balanced order (`pair_order`, `shuffled_pairs`), and print the paired difference
of the gateway overhead (client wall time − worker time) with a bootstrap interval of its median,
the order effect the balanced order cancels, in-body timings and each gateway's CPU per auction
(from /proc). bench/attestation.py's docstring says what each option does. Imports the bench's
helpers only (it starts the service as processes). See docs/DESIGN.md § Verifiable auctions.
"""

from __future__ import annotations

import argparse
import contextlib
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
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common
from bench.latency import overhead_table

GATEWAY_ADVERTISERS = [
    {
        "id": "strummaster",
        "name": "StrumMaster",
        "description": "selling guitars, tuners, and learning materials",
    },
    {"id": "chordify", "name": "Chordify", "description": "offering online guitar lessons"},
]


@contextlib.contextmanager
def _process(argv: list[str], env: dict[str, str], ready_url: str, cwd: Path = common.REPO) -> Iterator[int]:
    """`argv` in its own session with `env`, ready when `ready_url` answers 200 (yields its pid);
    SIGTERM'd on exit."""
    process = subprocess.Popen(argv, cwd=cwd, env=env, start_new_session=True)
    try:
        common.wait_ready(ready_url, process, 300)
        yield process.pid
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
