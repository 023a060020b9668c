"""Latency of one MOSAIC auction resolution (app.mechanism.run_auction, the draw included).

Run from the repository root: ``.venv/bin/python bench/mechanism.py``. Prints a table of the median
µs per auction over precomputed random inputs, then ``us_per_auction_n10_m64=<number>`` last.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

# The package is not installed editable: make `app` and `bench` importable when run as a script.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.mechanism import default_tau, run_auction
from bench.common import rich_table

SIZES = [(2, 20), (10, 64), (10, 1024)]  # (advertisers n, candidates M)
INPUT_SETS = 64  # distinct random instances, cycled through, so no single input is cached


Inputs = tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]


def _inputs(num_advertisers: int, num_candidates: int, rng: np.random.Generator) -> list[Inputs]:
    """INPUT_SETS (rewards, log_ref, log_proposal) triples; shapes (n, M), (M,), (M,)."""
    inputs: list[Inputs] = []
    for _ in range(INPUT_SETS):
        log_ref = rng.normal(-40.0, 10.0, num_candidates)  # sequence log-probs of ~64-token replies
        log_proposal = log_ref + rng.normal(0.0, 3.0, num_candidates)
        rewards = rng.normal(0.0, 5.0, (num_advertisers, num_candidates))
        inputs.append((rewards, log_ref, log_proposal))
    return inputs


def time_auctions(num_advertisers: int, num_candidates: int, runs: int, warmup: int) -> list[float]:
    """µs per run_auction call, one sample per call."""
    rng = np.random.default_rng(0)
    inputs = _inputs(num_advertisers, num_candidates, rng)
    tau = default_tau(num_advertisers)
    draw_rng = np.random.default_rng(1)
    for index in range(warmup):
        rewards, log_ref, log_proposal = inputs[index % INPUT_SETS]
        run_auction(rewards, log_ref, log_proposal, tau, draw_rng)
    samples = []
    clock = time.perf_counter_ns
    gc.disable()  # a collection inside one sample is noise, not the mechanism's cost
    try:
        for index in range(runs):
            rewards, log_ref, log_proposal = inputs[index % INPUT_SETS]
            start = clock()
            run_auction(rewards, log_ref, log_proposal, tau, draw_rng)
            samples.append((clock() - start) / 1000.0)
    finally:
        gc.enable()
    return samples


def _print_table(rows: list[tuple[int, int, list[float]]]) -> None:
    header = ("n", "M", "median µs", "p10 µs", "p90 µs", "runs")
    cells = []
    for n, m, samples in rows:
        deciles = statistics.quantiles(samples, n=10)
        median = statistics.median(samples)
        cells.append(
            (str(n), str(m), f"{median:.1f}", f"{deciles[0]:.1f}", f"{deciles[-1]:.1f}", str(len(samples)))
        )
    rich_table("run_auction, µs per auction", header, cells, left=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5000, help="timed auctions per size (>= 1000)")
    parser.add_argument("--warmup", type=int, default=500, help="untimed auctions first")
    args = parser.parse_args()
    if args.runs < 1000:
        parser.error("--runs must be at least 1000")
    rows = [(n, m, time_auctions(n, m, args.runs, args.warmup)) for n, m in SIZES]
    _print_table(rows)
    n10_m64 = next(samples for n, m, samples in rows if (n, m) == (10, 64))
    print(f"us_per_auction_n10_m64={statistics.median(n10_m64):.1f}")


if __name__ == "__main__":
    main()
