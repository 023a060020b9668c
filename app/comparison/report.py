"""`mosaic compare`'s report: ``compare.md`` (tables, who wins on what with 95% CIs) and its figures.

The figures are `plots`' (a panel per proposal and model, one style per mechanism). With several
models in the frame (``mosaic compare --beside``), ``compare.md`` opens with which conclusions hold on
every family (`families`) and then gives each model's own section. Every interval is the normal 95% CI
over (instance, seed) runs (`app.evaluation.metrics.mean_ci`); ``compare.md`` is written one section
per step. Imports `mechanisms` (labels), `plots`, `families`, `app.evaluation.metrics`, the evaluation
report's table writer and pandas (the layout: docs/DESIGN.md § Layout).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from app.comparison.families import families_section
from app.comparison.mechanisms import LABELS
from app.comparison.plots import write_figures
from app.evaluation import metrics
from app.evaluation.report import markdown_table

# (column, heading, higher is better?)
MEASURES: list[tuple[str, str, bool]] = [
    ("revenue", "revenue", True),
    ("reward_gain", "advertiser reward gain", True),
    ("welfare", "social welfare", True),
    ("user_gap", "user utility gap (E log π_ref − no ads)", True),
    ("ess", "ESS", True),
    ("incentive_gap", "incentive gap", False),
    ("compute_us", "compute per auction (µs)", False),
]


def _label(proposal: str, mechanism: str) -> str:
    return f"{LABELS.get(mechanism, mechanism)} · {proposal} candidates"


def _ci(values: pd.Series) -> str:
    stats = metrics.mean_ci(values.to_numpy(dtype=float))
    return f"{stats.mean:.4g} ± {stats.half_width:.2g}" if stats.count > 1 else f"{stats.mean:.4g}"


def summary_table(frame: pd.DataFrame, m: int) -> pd.DataFrame:
    """Mean ± 95% CI of every measure per (proposal, mechanism) at one M, plus the largest gap found."""
    records: list[dict[str, Any]] = []
    at_m = frame[frame["M"] == m]
    for (proposal, name), group in at_m.groupby(["proposal", "mechanism"], sort=False):
        record: dict[str, Any] = {"mechanism": _label(str(proposal), str(name))}
        for column, heading, _ in MEASURES:
            record[heading] = _ci(group[column])
        record["largest incentive gap"] = f"{group['incentive_gap'].max():.3g}"
        records.append(record)
    return pd.DataFrame.from_records(records)


def winners(frame: pd.DataFrame, m: int) -> list[str]:
    """For each measure at M: the best mechanism, and whether its 95% CI separates it from the next."""
    lines = []
    at_m = frame[frame["M"] == m]
    for column, heading, higher in MEASURES:
        summary = metrics.summarise(at_m, ["proposal", "mechanism"], column)
        summary = summary.sort_values("mean", ascending=not higher, kind="stable").reset_index(drop=True)
        if summary.empty:
            continue
        best = summary.iloc[0]
        best_label = _label(best["proposal"], best["mechanism"])
        text = f"- **{heading}**: {best_label} ({best['mean']:.4g} ± {best['ci']:.2g})"
        if len(summary) > 1:
            second = summary.iloc[1]
            separated = best["low"] > second["high"] if higher else best["high"] < second["low"]
            verdict = "CIs separate" if separated else "CIs overlap: not distinguishable at this size"
            text += (
                f"; next {_label(second['proposal'], second['mechanism'])} ({second['mean']:.4g}) — {verdict}"
            )
        lines.append(text)
    return lines


def _model_families(model_names: list[str]) -> list[str]:
    """The report's statement of which model families one model's conclusions rest on."""
    return [
        "## More than one LLM",
        "",
        f"This section rests on {', '.join(model_names) or 'one model'} alone. The second family is Gemma 3",
        "270M (`--model gemma3-270m`, a base model): run `mosaic compare --model gemma3-270m --out DIR`,",
        "then this command again with `--beside DIR` to put both families in one report, with the",
        "conclusions that hold on both.",
        "",
    ]


def write_report(frame: pd.DataFrame, out: Path, run_info: dict[str, Any]) -> list[Path]:
    """``compare.md`` and the figures; returns every path written."""
    out.mkdir(parents=True, exist_ok=True)
    files = write_figures(frame, out)
    models = sorted(str(m) for m in frame["model"].unique())
    lines = [*_introduction(frame, run_info)]
    if len(models) > 1:
        lines += families_section(frame)
        for model in models:
            of_model = frame[frame["model"] == model]
            largest = int(of_model["M"].max())
            lines += [f"# {model}", "", *_measures_at(of_model, largest, [])]
    else:
        lines += _measures_at(frame, int(frame["M"].max()), models)
    lines += [*_means_vs_m(frame), *_figure_lines(files)]
    report = out / "compare.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return [*files, report]


def _introduction(frame: pd.DataFrame, run_info: dict[str, Any]) -> list[str]:
    """The title, what was run (per model) and how the incentive gap is measured."""
    sizes = []
    for model, rows in frame.groupby("model", sort=True):
        runs = rows[["instance_id", "seed"]].drop_duplicates()
        m_values = sorted(int(m) for m in rows["M"].unique())
        sizes.append(
            f"- {model}: {runs['instance_id'].nunique()} instances × {runs['seed'].nunique()} seeds = "
            f"{len(runs)} runs per (proposal, M); M ∈ {m_values}; "
            f"proposals {sorted(str(p) for p in rows['proposal'].unique())}"
        )
    return [
        "# MOSAIC beside other mechanisms, on the same candidates",
        "",
        *sizes,
        "",
        f"τ the paper's (1 for two advertisers, n/2 beyond); {run_info.get('max_tokens')} tokens per reply.",
        "Intervals: mean ± 95% CI (normal) over runs.",
        "",
        "Every mechanism resolves the same cached candidates (`mosaic evaluate`'s cache). Reward gain",
        "and the user's gap are measured against the no-ads reply on those candidates; the incentive gap",
        "is the largest gain in true utility the misreport search found (scaled, shifted, concentrated,",
        f"noisy reports, then Powell with {run_info.get('optimise_evaluations')} evaluations), per auction,",
        "maximised over advertisers. A DSIC mechanism's gap is 0 up to rounding (~1e-14 here).",
        "",
    ]


def _measures_at(frame: pd.DataFrame, largest: int, model_names: list[str]) -> list[str]:
    """Who wins on what at the largest M, how to read it, the model families (when ``model_names``
    is the report's only model), every measure."""
    return [
        f"## Who wins on what (M = {largest})",
        "",
        *winners(frame, largest),
        "",
        "How to read these:",
        "- Revenue of a mechanism with a positive incentive gap is what it earns *if advertisers report",
        "  truthfully*, which they would not: the gap is what the best misreport found gains per auction, so",
        "  in equilibrium they shade and that revenue falls. MOSAIC's and VCG's revenue is what truthful,",
        "  dominant-strategy reports pay.",
        "- The best-of-M mechanisms choose argmax_j W_j deterministically (ESS 1): they pick the most",
        "  likely, usually shortest, candidate, so their E log π_ref is above a draw from π_ref (the no-ads",
        "  reply). log π_ref measures likelihood under the reference model, not usefulness; MOSAIC returns",
        "  a draw from π* ∝ π_ref·exp(Σ r/τ), the KL-regularised optimum, keeping the replies' diversity.",
        "",
        *(_model_families(model_names) if model_names else []),
        f"## All measures at M = {largest}",
        "",
        markdown_table(summary_table(frame, largest)),
        "",
    ]


def _means_vs_m(frame: pd.DataFrame) -> list[str]:
    """Revenue, incentive gap and user gap per (proposal, mechanism) against M."""
    lines: list[str] = []
    for column, heading in (
        ("revenue", "Revenue"),
        ("incentive_gap", "Incentive gap"),
        ("user_gap", "User gap"),
    ):
        table = frame.pivot_table(
            index=["model", "proposal", "mechanism"], columns="M", values=column, aggfunc="mean"
        )
        table = table.reset_index()
        table.columns = [str(c) if not isinstance(c, str) else c for c in table.columns]
        lines += [f"## {heading} vs M (means)", "", markdown_table(table.round(6)), ""]
    return lines


def _figure_lines(files: list[Path]) -> list[str]:
    """The report's figures (the PNGs written), by name."""
    pngs = [p for p in files if p.suffix == ".png"]
    return ["## Figures", "", *(f"![{p.stem.replace('_', ' ')}]({p.name})" for p in pngs), ""]
