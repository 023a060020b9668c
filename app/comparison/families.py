"""Which of `mosaic compare`'s conclusions hold on more than one model family, and how often each model's
candidates name an advertiser: the "Model families" section of ``compare.md``.

Each conclusion (:data:`CLAIMS`) is a test of one model's rows with its evidence, run per model on the
(instance, seed) runs every model has (so the families are compared on the same auctions); a claim that
needs a 95% CI to separate says so. Pure pandas over the comparison frame; imports
`app.evaluation.metrics` and the evaluation report's table writer (the layout: docs/DESIGN.md § Layout).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from app.evaluation import metrics
from app.evaluation.report import markdown_table

DSIC_ROUNDING = 1e-9  # an incentive gap below this is rounding (measured ~1e-14)


@dataclass(frozen=True)
class Verdict:
    holds: bool
    evidence: str


def _at(frame: pd.DataFrame, mechanism: str, proposal: str, m: int | None = None) -> pd.DataFrame:
    rows = frame[(frame["mechanism"] == mechanism) & (frame["proposal"] == proposal)]
    return rows[rows["M"] == (int(rows["M"].max()) if m is None else m)] if not rows.empty else rows


def _ci(rows: pd.DataFrame, column: str) -> metrics.MeanCI:
    return metrics.mean_ci(rows[column].to_numpy(dtype=float))


def _fmt(stats: metrics.MeanCI) -> str:
    return f"{stats.mean:.3g} ± {stats.half_width:.2g}"


def _dsic(frame: pd.DataFrame) -> Verdict:
    rows = frame[frame["mechanism"].isin(["mosaic", "vcg_best_of_m"])]
    worst = float(rows["incentive_gap"].max()) if not rows.empty else float("nan")
    return Verdict(worst < DSIC_ROUNDING, f"largest gap {worst:.2g}")


def _not_dsic(mechanism: str) -> Callable[[pd.DataFrame], Verdict]:
    def check(frame: pd.DataFrame) -> Verdict:
        stats = _ci(_at(frame, mechanism, "context"), "incentive_gap")
        return Verdict(stats.low > DSIC_ROUNDING, f"{_fmt(stats)} (context, largest M)")

    return check


def _revenue_grows(frame: pd.DataFrame) -> Verdict:
    small = _ci(_at(frame, "mosaic", "context", 2), "revenue")
    large = _ci(_at(frame, "mosaic", "context"), "revenue")
    return Verdict(large.mean > small.mean, f"{small.mean:.3g} at M=2 → {large.mean:.3g} at the largest M")


def _context_helps(frame: pd.DataFrame) -> Verdict:
    context = _ci(_at(frame, "mosaic", "context"), "reward_gain")
    reference = _ci(_at(frame, "mosaic", "reference"), "reward_gain")
    return Verdict(context.low > reference.high, f"{_fmt(context)} vs {_fmt(reference)}")


def _best_of_m_pleases_user(frame: pd.DataFrame) -> Verdict:
    best = _ci(_at(frame, "vcg_best_of_m", "context"), "user_gap")
    ours = _ci(_at(frame, "mosaic", "context"), "user_gap")
    return Verdict(best.low > ours.high, f"{_fmt(best)} vs MOSAIC {_fmt(ours)} nats")


def _mosaic_costs_user(frame: pd.DataFrame) -> Verdict:
    stats = _ci(_at(frame, "mosaic", "context"), "user_gap")
    return Verdict(stats.high < 0, f"{_fmt(stats)} nats")


def _offset_raises_revenue(frame: pd.DataFrame) -> Verdict:
    with_offset = _ci(_at(frame, "mosaic", "reference"), "revenue")
    without = _ci(_at(frame, "mosaic_no_offset", "reference"), "revenue")
    return Verdict(with_offset.mean > without.mean, f"{with_offset.mean:.3g} vs {without.mean:.3g} without")


def _first_price_top_revenue(frame: pd.DataFrame) -> Verdict:
    at_m = frame[(frame["M"] == frame["M"].max()) & (frame["proposal"] == "context")]
    means = at_m.groupby("mechanism")["revenue"].mean().sort_values(ascending=False)
    top = str(means.index[0]) if not means.empty else "none"
    return Verdict(top == "first_price_best_of_m", f"highest: {top} ({means.iloc[0]:.3g})")


# (the conclusion as compare.md states it, its test)
CLAIMS: list[tuple[str, Callable[[pd.DataFrame], Verdict]]] = [
    ("MOSAIC and best-of-M + VCG are DSIC: incentive gap 0 up to rounding at every M", _dsic),
    ("first-price best-of-M is not DSIC (gap's 95% CI above 0)", _not_dsic("first_price_best_of_m")),
    ("the segment auction is not DSIC (gap's 95% CI above 0)", _not_dsic("segment_auction")),
    ("MOSAIC's revenue grows with M (context candidates)", _revenue_grows),
    ("context candidates give advertisers more reward gain under MOSAIC (CIs separate)", _context_helps),
    (
        "best-of-M gives the user a higher E log π_ref than MOSAIC (context, CIs separate)",
        _best_of_m_pleases_user,
    ),
    ("MOSAIC on context candidates costs the user likelihood (gap's CI below 0)", _mosaic_costs_user),
    ("the offset raises MOSAIC's revenue (reference candidates)", _offset_raises_revenue),
    ("first-price best-of-M earns the most (truthful reports; context, largest M)", _first_price_top_revenue),
]


def common_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of the (instance, seed) runs that every model in ``frame`` has."""
    runs = frame[["model", "instance_id", "seed"]].drop_duplicates()
    counts = runs.groupby(["instance_id", "seed"]).size()
    shared = counts[counts == frame["model"].nunique()].index
    keyed = frame.set_index(["instance_id", "seed"])
    return keyed[keyed.index.isin(shared)].reset_index()


def claims_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per conclusion: each model's verdict with its evidence, and on which models it holds."""
    models = sorted(str(m) for m in frame["model"].unique())
    records = []
    for text, check in CLAIMS:
        record = {"conclusion": text}
        holds = []
        for model in models:
            verdict = check(frame[frame["model"] == model])
            record[model] = f"{'yes' if verdict.holds else 'no'}: {verdict.evidence}"
            holds += [model] if verdict.holds else []
        record["holds on"] = (
            "both" if len(holds) == len(models) and len(models) > 1 else ", ".join(holds) or "neither"
        )
        records.append(record)
    return pd.DataFrame.from_records(records)


def named_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per model and proposal at the largest M: the share of candidates naming an advertiser, and how
    often MOSAIC's returned reply does (mean ± 95% CI over runs)."""
    records = []
    at_m = frame[frame["M"] == frame["M"].max()]
    for (model, proposal), rows in at_m.groupby(["model", "proposal"], sort=True):
        mosaic = rows[rows["mechanism"] == "mosaic"]
        first = rows[rows["mechanism"] == rows["mechanism"].iloc[0]]
        records.append(
            {
                "model": model,
                "proposal": proposal,
                "candidates naming an advertiser": _fmt(_ci(first, "candidates_named")),
                "MOSAIC's reply names one": _fmt(_ci(mosaic, "reply_named")) if not mosaic.empty else "—",
                "runs": first[["instance_id", "seed"]].drop_duplicates().shape[0],
            }
        )
    return pd.DataFrame.from_records(records)


def _with_all_runs(table: pd.DataFrame, frame: pd.DataFrame, shared_runs: int) -> pd.DataFrame:
    """The claims table plus, for a model with more runs than the shared ones, its verdicts on all of
    them (what its own report rests on)."""
    for model, rows in frame.groupby("model", sort=True):
        runs = rows[["instance_id", "seed"]].drop_duplicates().shape[0]
        if runs > shared_runs:
            own = claims_table(rows).set_index("conclusion")[str(model)]
            table.insert(len(table.columns) - 1, f"{model}, all {runs} runs", own.to_numpy())
    return table


def _tally(table: pd.DataFrame, models: list[str]) -> str:
    """One sentence: how many conclusions hold on both families, on one, on neither."""
    counts = table["holds on"].value_counts()
    one = ", ".join(f"{counts.get(m, 0)} on {m} only" for m in models)
    return (
        f"On the shared runs {counts.get('both', 0)} of {len(table)} conclusions hold on both families, "
        f"{one}, {counts.get('neither', 0)} on neither."
    )


def families_section(frame: pd.DataFrame) -> list[str]:
    """compare.md's "Model families" section for a frame holding several models."""
    shared = common_runs(frame)
    runs = shared[["instance_id", "seed"]].drop_duplicates().shape[0]
    table = claims_table(shared)
    models = sorted(str(m) for m in frame["model"].unique())
    lines = [
        "## Model families: which conclusions hold on both",
        "",
        f"Models: {', '.join(sorted(str(m) for m in frame['model'].unique()))}. Each conclusion is tested",
        f"per model on the {runs} (instance, seed) runs every model has (the same auctions), at the",
        f"largest M ({int(frame['M'].max())}) unless it says otherwise; evidence: mean ± 95% CI over",
        "those runs. A model with more runs of its own also gets its verdicts on all of them.",
        "",
        markdown_table(_with_all_runs(table, frame, runs)),
        "",
        _tally(table, models),
        "",
    ]
    if {"candidates_named", "reply_named"} <= set(frame.columns):
        lines += [
            "### How often the candidates name an advertiser",
            "",
            "Share of the candidates (and of MOSAIC's returned replies) that name at least one advertiser",
            "(case-insensitive substring), at the largest M, over each model's own runs:",
            "",
            markdown_table(named_table(frame)),
            "",
        ]
    return lines
