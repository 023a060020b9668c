"""A day of traffic through the real mechanism: three paced campaigns with hard daily budgets.

Run from the repository root: ``.venv/bin/python bench/pacing.py``. Replays the 48 recorded SmolLM2
candidate sets (docs/results/evaluate/cache, M=16, two advertiser rows each) as auctions arriving by
a day curve (Poisson per hour) with an unannounced 3× burst in one hour; each auction is two of the
three campaigns (value scale 1). A first pass without pacing or budgets measures what each would
spend (U); the budgets are fractions of it. The paced pass fixes α = 1/(1+μ) before each auction
(app.campaigns.pacing), fits the hard budgets (app.campaigns.budget_fit) and updates μ with the
charge. Prints cumulative spend vs the cumulative target B·F(t) at the end of each hour, writes
docs/results/pacing.txt and docs/results/pacing.png, then ``name=value`` lines last. Seeded.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.campaigns.budget_fit import fit_budgets
from app.campaigns.pacing import (
    DEFAULT_EPSILON,
    DEFAULT_HORIZON,
    DEFAULT_MU_MAX,
    TrafficCurve,
    pacing_multiplier,
    pacing_target,
    pacing_update,
)
from app.ledger.budget import BudgetLimits, BudgetState, PacingStep
from app.mechanism import allocation_and_payments, default_tau

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "docs" / "results" / "evaluate" / "cache"
PAIRS = ((0, 1), (0, 2), (1, 2))
# A consumer day (local time): night trough, morning rise, lunch and evening peaks; shares per hour.
DAY_CURVE = (1.6, 1.0, 0.7, 0.5, 0.5, 0.8, 1.6, 3.0, 4.2, 4.8, 5.2, 5.6,
             6.0, 5.8, 5.4, 5.2, 5.3, 5.6, 6.0, 6.5, 6.8, 6.2, 4.6, 3.0)  # fmt: skip

FloatArray = NDArray[np.float64]
CandidateSet = tuple[FloatArray, FloatArray, FloatArray]  # (log π_i − log π_ref (2, M), log_ref, log_q)


@dataclass(frozen=True)
class DayConfig:
    auctions_per_day: int = 24_000
    burst_hour: int = 15  # 0-based; its traffic is burst_factor × the curve's, unannounced
    burst_factor: float = 3.0
    budget_fractions: tuple[float, ...] = (0.2, 0.35, 0.5)  # of each campaign's unpaced spend
    epsilon: float = DEFAULT_EPSILON
    mu_max: float = DEFAULT_MU_MAX
    horizon: float = DEFAULT_HORIZON
    seed: int = 0


@dataclass
class DayResult:
    budgets: list[int]
    unpaced: list[int]
    auctions_per_hour: list[int]
    spent: list[list[int]] = field(default_factory=list)  # [hour][campaign], cumulative at its end
    target: list[list[float]] = field(default_factory=list)
    lowered: int = 0  # auctions where fit_budgets lowered a campaign's α
    dropped: int = 0

    def deviations(self) -> list[list[float]]:
        return [
            [s / t - 1.0 for s, t in zip(row_s, row_t, strict=True)]
            for row_s, row_t in zip(self.spent, self.target, strict=True)
        ]

    def max_deviation(self) -> float:
        return max(abs(d) for row in self.deviations() for d in row)

    def over_budget(self) -> int:
        return sum(s > b for s, b in zip(self.spent[-1], self.budgets, strict=True))


def load_candidate_sets(cache: Path = CACHE) -> list[CandidateSet]:
    sets = []
    for path in sorted(cache.glob("instance-*/seed*-*.json")):
        raw = json.loads(path.read_text(encoding="utf-8"))
        log_ref = np.asarray(raw["log_ref"], dtype=np.float64)
        deltas = np.asarray(raw["log_advertisers"], dtype=np.float64) - log_ref
        sets.append((deltas, log_ref, np.asarray(raw["log_proposal"], dtype=np.float64)))
    if not sets:
        raise SystemExit(f"no candidate sets under {cache}")
    return sets


def arrivals(config: DayConfig, num_sets: int) -> list[tuple[float, int, int, bool]]:
    """(day fraction, candidate set, campaign pair, swap rows) per auction, in time order."""
    rng = np.random.default_rng(config.seed)
    shares = np.asarray(DAY_CURVE) / sum(DAY_CURVE)
    out: list[tuple[float, int, int, bool]] = []
    for hour, share in enumerate(shares):
        rate = config.auctions_per_day * share * (config.burst_factor if hour == config.burst_hour else 1.0)
        times = np.sort(hour + rng.random(rng.poisson(rate)))
        for t in times:
            out.append(
                (float(t) / 24.0, int(rng.integers(num_sets)), int(rng.integers(3)), bool(rng.random() < 0.5))
            )
    return out


def _rows(pair: int, swap: bool) -> tuple[int, int]:
    """The campaigns on rows 0 and 1 of the auction."""
    first, second = PAIRS[pair]
    return (second, first) if swap else (first, second)


def unpaced_spend(sets: list[CandidateSet], day: list[tuple[float, int, int, bool]]) -> list[int]:
    spend = [0.0, 0.0, 0.0]
    for _, index, pair, swap in day:
        deltas, log_ref, log_q = sets[index]
        _, payments = allocation_and_payments(deltas, log_ref, log_q, default_tau(2))
        for row, campaign in enumerate(_rows(pair, swap)):
            spend[campaign] += float(payments[row])
    return [int(x * 1e6) for x in spend]


def _state(spent: int, auctions: int, mu: float) -> BudgetState:
    return BudgetState("day", spent, 0, spent, 0, auctions, auctions, auctions, mu)


def simulate(config: DayConfig, sets: list[CandidateSet] | None = None) -> DayResult:
    """One day, paced, through fit_budgets; cumulative spend and target at the end of each hour."""
    sets = sets if sets is not None else load_candidate_sets()
    day = arrivals(config, len(sets))
    unpaced = unpaced_spend(sets, day)
    budgets = [int(u * f) for u, f in zip(unpaced, config.budget_fractions, strict=True)]
    limits = [BudgetLimits(b, None) for b in budgets]
    curve = TrafficCurve(DAY_CURVE)
    spent, auctions, mu = [0, 0, 0], [0, 0, 0], [0.0, 0.0, 0.0]
    hours = [0] * 24
    result = DayResult(budgets, unpaced, hours)
    hour_done = 0
    for number, (t, index, pair, swap) in enumerate(day):
        while t >= (hour_done + 1) / 24.0:
            _close_hour(result, spent, budgets, curve, hour_done)
            hour_done += 1
        hours[min(int(t * 24), 23)] += 1
        deltas, log_ref, log_q = sets[index]
        states = {c: _state(spent[c], auctions[c], mu[c]) for c in _rows(pair, swap)}
        entered = [(row, c) for row, c in enumerate(_rows(pair, swap)) if states[c].remaining(limits[c]) != 0]
        if not entered:
            continue
        rhos = {c: pacing_target(states[c], limits[c], t, curve, config.horizon) for _, c in entered}
        rewards = np.stack([deltas[row] * pacing_multiplier(mu[c]) for row, c in entered])
        remaining = [states[c].remaining(limits[c]) for _, c in entered]
        fit = fit_budgets(rewards, log_ref, log_q, default_tau(len(entered)), remaining, config.seed + number)
        result.lowered += len(fit.lowered)
        result.dropped += len(fit.dropped)
        for (_, c), charge in zip(entered, fit.payments_micro, strict=True):
            spent[c] += charge
            auctions[c] += 1
            mu[c] = pacing_update(mu[c], PacingStep(rhos[c], config.epsilon, config.mu_max), charge)
    while hour_done < 24:
        _close_hour(result, spent, budgets, curve, hour_done)
        hour_done += 1
    return result


def _close_hour(
    result: DayResult, spent: list[int], budgets: list[int], curve: TrafficCurve, hour: int
) -> None:
    share = curve.cumulative((hour + 1) / 24.0)
    result.spent.append(list(spent))
    result.target.append([b * share for b in budgets])


def report(result: DayResult, config: DayConfig) -> list[str]:
    head = f"{'hour':>4} {'auctions':>8}" + "".join(
        f"  {'spent' + str(k):>10} {'target' + str(k):>10} {'dev' + str(k):>7}" for k in range(3)
    )
    lines = [
        f"pacing day: {config.auctions_per_day} auctions/day by DAY_CURVE, burst {config.burst_factor}x "
        f"in hour {config.burst_hour} (unannounced), eps={config.epsilon}, mu_max={config.mu_max}, "
        f"horizon={config.horizon * 24 * 60:.0f} min, seed={config.seed}",
        "budgets (micro): "
        + ", ".join(
            f"{b} ({f:.0%} of unpaced {u})"
            for b, f, u in zip(result.budgets, config.budget_fractions, result.unpaced, strict=True)
        ),
        "cumulative spend and target B*F(t) at the end of each hour, micro-units; dev = spend/target - 1",
        head,
    ]
    for hour, (spent, target, devs) in enumerate(
        zip(result.spent, result.target, result.deviations(), strict=True)
    ):
        cells = "".join(
            f"  {s:>10} {t:>10.0f} {d:>+7.1%}" for s, t, d in zip(spent, target, devs, strict=True)
        )
        lines.append(f"{hour + 1:>4} {result.auctions_per_hour[hour]:>8}{cells}")
    return lines


def figures(result: DayResult) -> list[str]:
    return [
        f"max_abs_hourly_deviation={result.max_deviation():.4f}",
        f"over_budget_campaigns={result.over_budget()}",
        "end_of_day_spend_fraction="
        + ",".join(f"{s / b:.4f}" for s, b in zip(result.spent[-1], result.budgets, strict=True)),
        f"auctions={sum(result.auctions_per_hour)}",
        f"budget_fit_lowered={result.lowered}",
        f"budget_fit_dropped={result.dropped}",
    ]


def plot(result: DayResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = np.arange(0, 25)
    fig, (ax, low) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, height_ratios=(3, 2))
    for k, budget in enumerate(result.budgets):
        spent = [0] + [row[k] / 1e6 for row in result.spent]
        target = [0.0] + [row[k] / 1e6 for row in result.target]
        label = f"campaign {k} (budget {budget / 1e6:.0f})"
        line = ax.plot(hours, spent, marker="o", markersize=3, label=f"{label}: spend")
        ax.plot(hours, target, linestyle="--", color=line[0].get_color(), label=f"{label}: target B·F(t)")
        devs = [100 * row[k] for row in result.deviations()]
        low.plot(hours[1:], devs, marker="o", markersize=3, color=line[0].get_color(), label=label)
    for axis in (ax, low):
        axis.axvspan(15, 16, color="grey", alpha=0.2, label="3× burst (unannounced)" if axis is ax else None)
    low.axhspan(-10, 10, color="green", alpha=0.08)
    low.axhline(0, color="black", linewidth=0.5)
    low.set_ylim(-12, 12)
    low.set_xlabel("hour of the day")
    low.set_ylabel("spend / target − 1 (%)")
    ax.set_ylabel("cumulative spend (units)")
    ax.set_title("Pacing: cumulative spend vs target along the traffic curve (hard daily budgets)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--auctions", type=int, default=DayConfig.auctions_per_day, help="auctions per day")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epsilon", type=float, default=DEFAULT_EPSILON)
    parser.add_argument("--mu-max", type=float, default=DEFAULT_MU_MAX)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/results alone")
    args = parser.parse_args()
    config = DayConfig(
        auctions_per_day=args.auctions, seed=args.seed, epsilon=args.epsilon, mu_max=args.mu_max
    )
    result = simulate(config)
    lines = report(result, config)
    print("\n".join(lines))
    if not args.no_write:
        out = REPO / "docs" / "results"
        (out / "pacing.txt").write_text("\n".join([*lines, *figures(result)]) + "\n", encoding="utf-8")
        plot(result, out / "pacing.png")
    print("\n".join(figures(result)))


if __name__ == "__main__":
    main()
