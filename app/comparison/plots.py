"""`mosaic compare`'s figures (PNG + SVG, matplotlib Agg), drawn to be read.

* One colour and one marker per mechanism (:data:`MECHANISM_STYLE`, colour-blind safe, Okabe-Ito), the
  same in every figure; the two MOSAIC variants share a hue family (solid and dashed).
* Panels side by side, never a legend entry per combination: a column per proposal (the candidates
  the mechanisms choose among), a row per model when the frame holds several.
* One legend for the whole figure, below the panels (never over the data); units on every axis.
* Series at one M are nudged apart on the log2 axis so their 95% CI bars do not hide each other.

Figures: ``frontier`` (revenue against the user's utility gap, points along M), ``incentive_gap_vs_m``,
``revenue_vs_m``, ``reward_gain_vs_m``, ``named_vs_m`` (how often the candidates and the returned reply
name an advertiser). Every interval is the normal 95% CI over (instance, seed) runs
(`app.evaluation.metrics.summarise`). Imports `mechanisms` (labels), `app.evaluation.metrics`,
matplotlib and pandas (the layout: docs/DESIGN.md § Layout).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from app.comparison.mechanisms import LABELS
from app.evaluation import metrics

__all__ = ["MECHANISM_STYLE", "UNITS", "write_figures"]

# mechanism -> (colour, marker, line style); Okabe-Ito colours.
MECHANISM_STYLE: dict[str, tuple[str, str, str]] = {
    "mosaic": ("#0072B2", "o", "-"),
    "mosaic_no_offset": ("#56B4E9", "s", "--"),
    "no_ads": ("#000000", "x", ":"),
    "vcg_best_of_m": ("#009E73", "^", "-"),
    "first_price_best_of_m": ("#D55E00", "v", "-"),
    "segment_auction": ("#CC79A7", "D", "-"),
}
_FALLBACK_STYLE = ("#7f7f7f", "P", "-")
PROPOSAL_TITLES = {
    "context": "context-aware candidates (π_con)",
    "reference": "reference candidates (π_ref)",
    "mixture": "mixture candidates",
}
# Axis labels with their units: rewards and payments are in the advertisers' value units (a reward is
# s_i × a log-probability ratio, s_i her value per nat); log-probabilities in nats.
UNITS = {
    "M": "M (candidates per auction, log scale)",
    "revenue": "revenue (value units per auction)",
    "reward_gain": "advertisers' reward gain (value units per auction)",
    "incentive_gap": "incentive gap (value units per auction)",
    "user_gap": "user's utility gap: E log π_ref − no ads (nats)",
    "named": "share naming an advertiser (0–1)",
}
_NUDGE = 0.035  # log2 units between neighbouring mechanisms at one M


def _style(mechanism: str) -> tuple[str, str, str]:
    return MECHANISM_STYLE.get(mechanism, _FALLBACK_STYLE)


def _ordered(values: pd.Series, order: list[str]) -> list[str]:
    present = [str(v) for v in dict.fromkeys(values)]
    return [v for v in order if v in present] + [v for v in present if v not in order]


def _grid(frame: pd.DataFrame) -> tuple[Figure, np.ndarray, list[str], list[str]]:
    """A figure with a panel per (model, proposal): rows are models, columns proposals."""
    models = _ordered(frame["model"], [])
    proposals = _ordered(frame["proposal"], list(PROPOSAL_TITLES))
    fig, axes = plt.subplots(
        len(models),
        len(proposals),
        figsize=(5.2 * len(proposals), 3.6 * len(models) + 0.9),
        squeeze=False,
        sharex=True,
        sharey="row",
    )
    for row, model in enumerate(models):
        for col, proposal in enumerate(proposals):
            axes[row, col].set_title(f"{model} · {PROPOSAL_TITLES.get(proposal, proposal)}", fontsize=9)
    return fig, axes, models, proposals


def _mechanisms(frame: pd.DataFrame) -> list[str]:
    return _ordered(frame["mechanism"], list(MECHANISM_STYLE))


def _legend(fig: Figure, mechanisms: list[str], extra: Sequence[tuple[str, dict[str, Any]]] = ()) -> None:
    """One legend for the figure, centred below every panel."""
    handles = []
    for name in mechanisms:
        colour, marker, line = _style(name)
        label = LABELS.get(name, name)
        (handle,) = plt.plot([], [], color=colour, marker=marker, linestyle=line, label=label)
        handles.append(handle)
    for label, kwargs in extra:
        (handle,) = plt.plot([], [], label=label, **kwargs)
        handles.append(handle)
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), fontsize=8, frameon=False)


def _finish(fig: Figure, title: str, out: Path, stem: str) -> list[Path]:
    fig.suptitle(title, fontsize=11)
    grid = fig.axes[0].get_gridspec() if fig.axes else None
    rows = grid.nrows if grid is not None else 1
    # Room below the panels for the legend (about 0.45 inch), whatever the figure's height.
    fig.tight_layout(rect=(0.0, 0.45 / (3.6 * rows + 0.9), 1.0, 1.0))
    paths = [out / f"{stem}.png", out / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=130, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def _m_axis(ax: Axes, m_values: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(m_values)
    ax.set_xticklabels([str(m) for m in m_values])
    ax.grid(alpha=0.3)


def _panel(frame: pd.DataFrame, model: str, proposal: str) -> pd.DataFrame:
    return frame[(frame["model"] == model) & (frame["proposal"] == proposal)]


def _errorbar_style(mechanism: str) -> dict[str, Any]:
    """A mechanism's line in every figure: its colour, marker and line style."""
    colour, marker, line = _style(mechanism)
    sizes = {"markersize": 4, "capsize": 2, "linewidth": 1.2}
    return {"color": colour, "marker": marker, "linestyle": line, **sizes}


def _mechanism_lines(ax: Axes, panel: pd.DataFrame, mechanisms: list[str], column: str) -> None:
    """One line per mechanism: ``column``'s mean ± 95% CI against M, nudged apart along M."""
    for index, name in enumerate(mechanisms):
        summary = metrics.summarise(panel[panel["mechanism"] == name], ["M"], column)
        if summary.empty:
            continue
        nudge = 2.0 ** (_NUDGE * (index - (len(mechanisms) - 1) / 2))
        x = summary["M"].to_numpy(dtype=float) * nudge
        ax.errorbar(x, summary["mean"], yerr=summary["ci"].fillna(0.0), **_errorbar_style(name))


def _labels(ax: Axes, bottom: bool, left: bool, quantity: str) -> None:
    """M on the bottom row's axes, the quantity with its unit on the left column's."""
    if bottom:
        ax.set_xlabel(UNITS["M"])
    if left:
        ax.set_ylabel(UNITS[quantity], fontsize=8)


def plot_vs_m(frame: pd.DataFrame, out: Path, column: str, stem: str, title: str) -> list[Path]:
    """``column`` (mean ± 95% CI) against M, one line per mechanism, a panel per (model, proposal)."""
    fig, axes, models, proposals = _grid(frame)
    mechanisms = _mechanisms(frame)
    m_values = sorted(int(m) for m in frame["M"].unique())
    for row, model in enumerate(models):
        for col, proposal in enumerate(proposals):
            ax = axes[row, col]
            panel = _panel(frame, model, proposal)
            _mechanism_lines(ax, panel, mechanisms, column)
            _m_axis(ax, m_values)
            _labels(ax, row == len(models) - 1, col == 0, column)
    _legend(fig, mechanisms)
    return _finish(fig, f"{title} (mean ± 95% CI over runs)", out, stem)


def plot_frontier(frame: pd.DataFrame, out: Path) -> list[Path]:
    """Revenue against the user's utility gap (up-right is better for the platform and the user), one
    path per mechanism through its M values, M written at the path's two ends."""
    fig, axes, models, proposals = _grid(frame)
    mechanisms = _mechanisms(frame)
    for row, model in enumerate(models):
        for col, proposal in enumerate(proposals):
            ax = axes[row, col]
            panel = _panel(frame, model, proposal)
            for name in mechanisms:
                rows = panel[panel["mechanism"] == name]
                x = metrics.summarise(rows, ["M"], "user_gap")
                y = metrics.summarise(rows, ["M"], "revenue")
                if x.empty:
                    continue
                colour = _style(name)[0]
                xerr, yerr = x["ci"].fillna(0.0), y["ci"].fillna(0.0)
                ax.errorbar(x["mean"], y["mean"], xerr=xerr, yerr=yerr, alpha=0.9, **_errorbar_style(name))
                for i in (0, len(x) - 1):
                    ax.annotate(
                        f"M={int(x['M'].iloc[i])}",
                        (x["mean"].iloc[i], y["mean"].iloc[i]),
                        fontsize=6,
                        color=colour,
                        xytext=(3, 3),
                        textcoords="offset points",
                    )
            ax.grid(alpha=0.3)
            if row == len(models) - 1:
                ax.set_xlabel(UNITS["user_gap"], fontsize=8)
            if col == 0:
                ax.set_ylabel(UNITS["revenue"], fontsize=8)
    _legend(fig, mechanisms)
    return _finish(fig, "Revenue vs the user's utility (mean ± 95% CI; one point per M)", out, "frontier")


def plot_named(frame: pd.DataFrame, out: Path) -> list[Path]:
    """How often the candidates name an advertiser (black, the same for every mechanism) and how often
    each mechanism's returned reply does, against M."""
    fig, axes, models, proposals = _grid(frame)
    mechanisms = _mechanisms(frame)
    m_values = sorted(int(m) for m in frame["M"].unique())
    candidates_style: dict[str, Any] = {"color": "#7f7f7f", "linestyle": "-", "linewidth": 6.0, "alpha": 0.35}
    for row, model in enumerate(models):
        for col, proposal in enumerate(proposals):
            ax = axes[row, col]
            panel = _panel(frame, model, proposal)
            share = metrics.summarise(panel[panel["mechanism"] == mechanisms[0]], ["M"], "candidates_named")
            ax.plot(share["M"], share["mean"], **candidates_style)
            _mechanism_lines(ax, panel, mechanisms, "reply_named")
            _m_axis(ax, m_values)
            ax.set_ylim(-0.05, 1.05)
            _labels(ax, row == len(models) - 1, col == 0, "named")
    _legend(fig, mechanisms, [("candidates (all M of them)", candidates_style)])
    title = "Replies naming an advertiser: the candidates and the returned reply"
    return _finish(fig, title, out, "named_vs_m")


def write_figures(frame: pd.DataFrame, out: Path) -> list[Path]:
    """Every figure of the report into ``out``; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    files = plot_frontier(frame, out)
    files += plot_vs_m(frame, out, "incentive_gap", "incentive_gap_vs_m", "Incentive gap vs M")
    files += plot_vs_m(frame, out, "revenue", "revenue_vs_m", "Revenue vs M")
    files += plot_vs_m(frame, out, "reward_gain", "reward_gain_vs_m", "Advertisers' reward gain vs M")
    if {"candidates_named", "reply_named"} <= set(frame.columns):
        files += plot_named(frame, out)
    return files
