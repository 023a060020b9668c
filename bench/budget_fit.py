"""Cost of fitting an auction into its advertisers' budgets (app.campaigns.budget_fit.fit_budgets).

Run from the repository root: ``.venv/bin/python bench/budget_fit.py``. For n advertisers and M
candidates (random instances as bench/mechanism.py draws them), times one `run_auction` and
`fit_budgets` with no budget binding, one advertiser bound at half her unbound charge, and every
advertiser bound at half; counts the mechanism solves and the rounds. Prints a table, then
``name=value`` lines last (median µs).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# The package is not installed editable: make `app` and `bench` importable when run as a script.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app import mechanism
from app.campaigns.budget_fit import charge_micro, fit_budgets
from bench.common import rich_table

SIZES = [(2, 16), (2, 64), (4, 16), (4, 64), (8, 16), (8, 64)]
CASES = ("none", "one", "all")  # which advertisers' budgets bind (at half their unbound charge)


def _instances(n: int, m: int, count: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        log_ref = rng.normal(-40.0, 10.0, m)
        out.append((rng.normal(0.0, 5.0, (n, m)), log_ref, log_ref + rng.normal(0.0, 3.0, m)))
    return out


def _remaining(charges: list[int], case: str) -> list[int | None]:
    if case == "none":
        return [None] * len(charges)
    if case == "one":
        return [charges[0] // 2] + [None] * (len(charges) - 1)
    return [c // 2 for c in charges]


def _timed(call: Callable[[], object], repeats: int) -> float:
    """Median µs of ``repeats`` calls."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - start) / 1000.0)
    return statistics.median(samples)


def measure(n: int, m: int, count: int, repeats: int) -> dict[str, tuple[float, float, float, int]]:
    """case → (median µs, mean solves, mean rounds, dropped) over ``count`` instances."""
    tau = mechanism.default_tau(n)
    solves = [0]
    solve = mechanism.allocation_and_payments

    def counted(*args: object) -> tuple[np.ndarray, np.ndarray]:
        solves[0] += 1
        return solve(*args)  # type: ignore[arg-type]

    out: dict[str, tuple[float, float, float, int]] = {}
    instances = _instances(n, m, count, seed=n * 1000 + m)
    for case in CASES:
        times, counts, rounds, dropped = [], [], [], 0
        for index, (rewards, log_ref, log_q) in enumerate(instances):
            charges = [charge_micro(p) for p in solve(rewards, log_ref, log_q, tau)[1]]
            remaining = _remaining(charges, case)
            times.append(_timed(lambda: fit_budgets(rewards, log_ref, log_q, tau, remaining, index), repeats))  # noqa: B023
            mechanism.allocation_and_payments = counted  # type: ignore[assignment]
            try:
                solves[0] = 0
                fit = fit_budgets(rewards, log_ref, log_q, tau, remaining, index)
            finally:
                mechanism.allocation_and_payments = solve
            counts.append(solves[0] + 1)  # + the final run_auction
            rounds.append(fit.rounds)
            dropped += len(fit.dropped)
        out[case] = (statistics.median(times), float(np.mean(counts)), float(np.mean(rounds)), dropped)
    rewards, log_ref, log_q = instances[0]
    rng = np.random.default_rng(0)
    out["run_auction"] = (
        _timed(lambda: mechanism.run_auction(rewards, log_ref, log_q, tau, rng), repeats),
        1.0,
        0.0,
        0,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=40, help="random instances per size")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per instance (median)")
    args = parser.parse_args()
    rows, figures = [], []
    gc.disable()
    try:
        for n, m in SIZES:
            result = measure(n, m, args.instances, args.repeats)
            for case in ("run_auction", *CASES):
                micros, solves, rounds, dropped = result[case]
                label = case if case == "run_auction" else f"fit, {case} bound"
                rows.append(
                    (str(n), str(m), label, f"{micros:.0f}", f"{solves:.1f}", f"{rounds:.2f}", str(dropped))
                )
                figures.append(f"us_{case}_n{n}_m{m}={micros:.0f}")
    finally:
        gc.enable()
    header = ("n", "M", "call", "median µs", "solves", "rounds", "dropped")
    rich_table(
        f"fit_budgets, {args.instances} instances per size, budgets at half the charge", header, rows, left=3
    )
    print("\n".join(figures))


if __name__ == "__main__":
    main()
