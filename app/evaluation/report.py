"""``report.md`` of `mosaic evaluate`: the paper's claims beside our numbers, tables and figures.

`write_report` renders the claim table (`claims.paper_claims`), the means per (proposal, M) at the
primary τ (`summary_table`), the τ sweep at the largest M (`tau_table`), the history of runs, links to
the figures that exist, and the method, one section per step. Imports `claims` and `metrics`, numpy
and pandas only (the layout: docs/DESIGN.md § Layout).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from app.evaluation import metrics
from app.evaluation.claims import FAILS, HOLDS, INCONCLUSIVE, Claim, fmt_ci, paper_claims


def markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(str(value) for value in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


_SUMMARY_COLUMNS = [
    ("log_target_expected_centred", "E log π* (centred)"),
    ("log_ref_expected", "E log π_ref"),
    ("total_reward_gain", "reward gain"),
    ("total_reward_gain_approx", "reward gain (approx.)"),
    ("revenue", "revenue"),
    ("total_utility_gain", "utility gain"),
    ("total_utility_gain_approx", "utility gain (approx.)"),
    ("total_utility_gain_without_offset", "utility gain, no offset"),
    ("fraction_named_expected", "E fraction named"),
    ("ess", "ESS"),
]


def summary_table(auctions: pd.DataFrame) -> pd.DataFrame:
    """Mean ± 95% CI of the main quantities per (proposal, M) at the primary τ, as strings."""
    frame = auctions[auctions["primary_tau"].astype(bool)]
    records = []
    for (proposal, m), group in frame.groupby(["proposal", "M"], sort=True):
        record: dict[str, Any] = {"proposal": proposal, "M": int(m)}
        for column, label in _SUMMARY_COLUMNS:
            record[label] = fmt_ci(metrics.mean_ci(group[column].to_numpy(dtype=np.float64)))
        records.append(record)
    return pd.DataFrame.from_records(records)


def tau_table(auctions: pd.DataFrame) -> pd.DataFrame:
    m_max = int(auctions["M"].max())
    frame = auctions[auctions["M"] == m_max]
    records = []
    for (proposal, multiplier), group in frame.groupby(["proposal", "tau_multiplier"], sort=True):
        record: dict[str, Any] = {"proposal": proposal, "τ / τ_paper": f"{multiplier:g}"}
        for column, label in (
            ("log_ref_expected", "E log π_ref"),
            ("total_reward_gain", "reward gain"),
            ("revenue", "revenue"),
            ("fraction_named_expected", "E fraction named"),
            ("ess", "ESS"),
        ):
            record[label] = fmt_ci(metrics.mean_ci(group[column].to_numpy(dtype=np.float64)))
        records.append(record)
    return pd.DataFrame.from_records(records)


_FIGURES = [
    ("fig1a_log_target_vs_m", "Fig. 1a — log π* of the reply vs M"),
    ("fig1b_reward_gain_vs_m", "Fig. 1b — advertiser reward gain vs M"),
    ("fig2_revenue_vs_m", "Fig. 2 — revenue vs M"),
    ("fig3_log_ref_vs_m", "Fig. 3 (App. C.3) — log π_ref of the reply vs M"),
    ("fig4_utility_gain_vs_m", "Fig. 4 (App. C.4) — utility gain with and without the offset"),
    ("fig5_6_utility_vs_reward_scatter", "Figs. 5-6 (App. C.4) — utility vs reward gain per advertiser"),
    ("fig7_correlation_vs_m", "Fig. 7 (App. C.4) — Pearson correlation, with and without the offset"),
    ("fig12_fraction_named_vs_m", "Fig. 12 (App. C.7) — fraction of advertisers named"),
    ("tau_sweep", "τ sweep at the largest M"),
    ("ess_vs_m", "Effective sample size"),
]


def write_report(
    out: Path, auctions: pd.DataFrame, advertisers: pd.DataFrame, run_info: dict[str, Any]
) -> Path:
    lines = [
        *_run_lines(auctions, run_info),
        *_claim_lines(paper_claims(auctions, advertisers)),
        _observations(auctions),
        "",
        "## Means per proposal and M (primary τ)",
        "",
        markdown_table(summary_table(auctions)),
        "",
        "## τ sweep at the largest M",
        "",
        markdown_table(tau_table(auctions)),
        "",
        "## Figures",
        "",
    ]
    for stem, title in _FIGURES:
        if (out / f"{stem}.png").exists():
            lines += [f"### {title}", "", f"![{title}]({stem}.png)", ""]
    lines += _METHOD_LINES
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _run_lines(auctions: pd.DataFrame, run_info: dict[str, Any]) -> list[str]:
    """The title, what was run (instances, seeds, M, proposals, model, τ) and the history of runs."""
    runs = auctions[["instance_id", "seed"]].drop_duplicates().shape[0]
    return [
        "# MOSAIC evaluation — the paper's figures on our instances",
        "",
        f"Instances: `{run_info['instances']}` (first {run_info['num_instances']}), "
        f"{run_info['seeds']} seed{'s' if run_info['seeds'] != 1 else ''} each ({runs} runs per proposal "
        "and M); "
        f"M ∈ {{{', '.join(str(m) for m in run_info['candidates'])}}}; proposals: "
        f"{', '.join(run_info['proposals'])}; max_tokens {run_info['max_tokens']}; temperature "
        f"{run_info['temperature']:g}, top-p {run_info['top_p']:g}; engine `{run_info['engine']}` "
        f"(model {', '.join(run_info['model_names'])}).",
        "",
        f"τ: {_tau_text(run_info)}. Figures against M use the primary τ.",
        "",
        f"Model time (draw + score) summed over all {run_info['units_total']} units, from the cache: "
        f"{run_info['collect_seconds_total']:.1f} s. Runs into this directory (a resumed run only "
        "re-renders; `load` is the 1-minute load average of the machine, CPUs shared with other work):",
        "",
        markdown_table(_history_table(run_info.get("history", []))),
        "",
    ]


def _claim_lines(claims: list[Claim]) -> list[str]:
    """The claims section: how many hold, how a verdict is reached, the table."""
    claim_table = pd.DataFrame.from_records(
        [
            {"paper's claim": c.claim, "paper": c.paper, "ours": c.ours, "verdict": f"**{c.verdict}**"}
            for c in claims
        ]
    )
    counts = {v: sum(1 for c in claims if c.verdict == v) for v in (HOLDS, FAILS, INCONCLUSIVE)}
    return [
        "## The paper's claims beside our numbers",
        "",
        f"Of {sum(counts.values())} tested claims: {counts[HOLDS]} hold, {counts[FAILS]} do not hold, "
        f"{counts[INCONCLUSIVE]} are inconclusive. Values are mean ± 95% CI (normal) over runs; "
        '"paired" differences pair the same (instance, seed). A directional claim *holds* when the 95% '
        "CI of the paired difference lies wholly on the claimed side, *does not hold* when it lies wholly "
        'on the other side, and is *inconclusive* otherwise; "near zero" holds when the baseline\'s CI '
        "contains 0 or its mean is at most a quarter of the context-aware mean in size. The claims are "
        'checked at the primary τ; "baseline" is the reference proposal.',
        "",
        markdown_table(claim_table),
        "",
    ]


_METHOD_LINES = (
    "## Method",
    "",
    "- Per (instance, seed, proposal) the largest M is drawn and scored once through the service's own "
    "code (`CandidateSampler.collect`: prompts → tokenize → generate → score, no billing) and cached in "
    "`cache/`; each smaller M uses the first M candidates (i.i.d. draws, so a prefix is a draw of M). "
    "For `mixture` the service draws a context pool and a reference pool; M's set is the first "
    "`mixture_counts(M)` of each pool and its log q the balance-heuristic mixture with that M's shares.",
    "- Each (M, τ) auction is resolved by `app.mechanism.run_auction` on the prefix; the returned reply "
    "is drawn with a generator seeded by (unit seed, proposal, M, τ): deterministic by seed.",
    "- log π*(y) = log π_ref(y) + Σ_i r_i(y)/τ up to the unknown normaliser, so it is centred: minus its "
    'mean over all rows of the same (instance, τ) (seeds, proposals and M alike). "E" columns are '
    "expectations under the allocation, Σ_j π_j f(y_j) (less noisy than the returned reply).",
    "- Reward gain, exact: R_i minus her expected reward in the auction on the same candidates without "
    "her reward (π^{-i} = softmax(ℓ − r_i/τ)). It measures the allocation's move towards her only, not "
    "the effect of her presence in the context-aware prompt; with the offset the utility gain then "
    "equals U_i − Σ_j π^{-i}_j r_i(y_j) ≥ 0 by Jensen (Lemma 5.2), so ex-ante IR holds by construction "
    "for that counterfactual.",
    "- Reward gain, paper's approximation: R_i minus her plain mean reward over the M candidates that do "
    "not name her (case-insensitive name match); undefined (NaN, left out of means) when all name her, "
    "and a run's total is NaN when any advertiser's is.",
    "- The exact reward gain is ≥ 0 in every run: π is π^{-i} tilted by "
    "exp(r_i/τ), and tilting raises the mean of r_i. For the baseline the candidates do not depend on "
    "the advertisers, so there the exact counterfactual *is* the paper's definition.",
    "- Payments with the offset are the mechanism's; without it p_i = R_i − τ·LSE(ℓ). "
    "Utility gain = reward gain − payment; revenue = Σ_i p_i.",
    "- The paper samples at temperature 0.8 / top-p 0.95 with Llama-2-7b-chat and 50 queries × 25 seeds, "
    "M up to 20; the CPU default here is SmolLM2-135M-Instruct, short replies and a few runs, so levels "
    "differ; the comparison is qualitative.",
    "",
    "Tables: `rows.csv` (one row per auction: instance, seed, proposal, τ, M) and `advertisers.csv` "
    "(one row per auction and advertiser); `run.json` holds the configuration and timings.",
    "",
)


def _observations(auctions: pd.DataFrame) -> str:
    """Facts about the candidates that bound what the claims can show (naming rate, truncation)."""
    frame = auctions[auctions["primary_tau"].astype(bool)]
    m_max = int(frame["M"].max())
    parts = []
    for proposal in sorted(set(frame["proposal"])):
        rows = frame[(frame["proposal"] == proposal) & (frame["M"] == m_max)]
        rate = float(rows["fraction_named_candidates"].mean())
        truncated = float((rows["chosen_finish_reason"] == "length").mean())
        parts.append(
            f"{proposal}: candidates name {rate:.1%} of the advertisers on average; "
            f"{truncated:.0%} of returned replies hit max_tokens"
        )
    return "Candidates (at the largest M): " + "; ".join(parts) + "."


def _history_table(history: list[dict[str, Any]]) -> pd.DataFrame:
    records = [
        {
            "finished": entry.get("finished_at", "?"),
            "wall time (s)": entry.get("wall_seconds", "?"),
            "units computed": entry.get("units_computed", "?"),
            "units reused": entry.get("units_reused", "?"),
            "model time of computed units (s)": entry.get("collect_seconds", "?"),
            "load at start / end": (
                f"{entry.get('load_average_1m_start')} / {entry.get('load_average_1m_end')}"
            ),
            "CPUs": entry.get("cpu_count", "?"),
        }
        for entry in history
    ]
    return pd.DataFrame.from_records(
        records,
        columns=[
            "finished",
            "wall time (s)",
            "units computed",
            "units reused",
            "model time of computed units (s)",
            "load at start / end",
            "CPUs",
        ],
    )


def _tau_text(run_info: dict[str, Any]) -> str:
    if run_info["taus"] is None:
        multipliers = ", ".join(f"{m:g}" for m in run_info["tau_multipliers"])
        return f"the paper's τ (1 for n ≤ 2, n/2 above) times {{{multipliers}}}; primary: the paper's τ"
    return f"{{{', '.join(f'{t:g}' for t in run_info['taus'])}}}; primary: {run_info['taus'][0]:g}"
