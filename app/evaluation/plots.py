"""The figures of `mosaic evaluate` (matplotlib, Agg backend): each written as PNG and SVG.

Every figure against M uses the rows at the primary τ (the paper's τ unless ``--tau`` was given) and
shows the mean over (instance, seed) runs with a 95% confidence band (normal, `mean_ci`). File names
carry the paper's figure numbers:

* ``fig1a_log_target_vs_m``  log π* (centred per instance) of the returned reply / its expectation;
* ``fig1b_reward_gain_vs_m`` total advertiser reward gain (exact and the paper's approximation);
* ``fig2_revenue_vs_m``      revenue;
* ``fig3_log_ref_vs_m``      log π_ref of the returned reply (usefulness to the user, App. C.3);
* ``fig4_utility_gain_vs_m`` total utility gain with and without the offset (App. C.4, Fig. 4);
* ``fig5_6_utility_vs_reward_scatter`` per-advertiser scatter at the largest M (Figs. 5-6);
* ``fig7_correlation_vs_m``  Pearson correlation of reward gain and utility gain (Fig. 7);
* ``fig12_fraction_named_vs_m`` fraction of advertisers named (App. C.7, Fig. 12);
* ``tau_sweep``              the τ sweep at the largest M;
* ``ess_vs_m``               effective sample size of the allocation.

Imports `metrics`, matplotlib, numpy and pandas only.
See docs/DESIGN.md § Layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from app.evaluation import metrics

__all__ = ["PROPOSAL_STYLE", "write_all_plots"]

PROPOSAL_STYLE: dict[str, dict[str, str]] = {
    "context": {"color": "#1f77b4", "marker": "o", "label": "context-aware (π_con)"},
    "reference": {"color": "#d62728", "marker": "s", "label": "baseline (π_ref)"},
    "mixture": {"color": "#2ca02c", "marker": "^", "label": "mixture"},
}
_FALLBACK_STYLE = {"color": "#7f7f7f", "marker": "D"}


def _style(proposal: str) -> dict[str, str]:
    return PROPOSAL_STYLE.get(proposal, {**_FALLBACK_STYLE, "label": proposal})


def _proposals(frame: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(frame["proposal"]))
    order = [p for p in PROPOSAL_STYLE if p in present]
    return order + [p for p in present if p not in order]


def _primary(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["primary_tau"].astype(bool)]


def _m_axis(ax: Axes, m_values: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(m_values))
    ax.set_xticklabels([str(m) for m in m_values])
    ax.set_xlabel("number of candidate replies M")
    ax.grid(True, alpha=0.3)


def _band(
    ax: Axes,
    frame: pd.DataFrame,
    x: str,
    column: str,
    proposal: str,
    *,
    label: str | None = None,
    linestyle: str = "-",
) -> None:
    summary = metrics.summarise(frame[frame["proposal"] == proposal], [x], column)
    summary = summary[summary["count"] > 0]
    if summary.empty:
        return
    style = _style(proposal)
    xs = summary[x].to_numpy(dtype=float)
    ax.plot(
        xs,
        summary["mean"],
        color=style["color"],
        marker=style["marker"],
        linestyle=linestyle,
        label=label if label is not None else style["label"],
    )
    ci = summary["ci"].fillna(0.0).to_numpy(dtype=float)
    mean = summary["mean"].to_numpy(dtype=float)
    ax.fill_between(xs, mean - ci, mean + ci, color=style["color"], alpha=0.15, linewidth=0)


def _save(fig: Figure, out: Path, stem: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=130, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def _caption(fig: Figure, frame: pd.DataFrame, what: str = "mean ± 95% CI over") -> None:
    runs = frame[["instance_id", "seed"]].drop_duplicates().shape[0]
    taus = sorted(set(np.round(frame["tau"].to_numpy(dtype=float), 6)))
    tau_text = ", ".join(f"{t:g}" for t in taus[:4]) + (" …" if len(taus) > 4 else "")
    fig.text(
        0.01,
        -0.02,
        f"{what} {runs} runs (instances × seeds); τ = {tau_text}",
        fontsize=8,
        color="#555555",
        ha="left",
        va="top",
    )


def _vs_m_figure(
    frame: pd.DataFrame,
    panels: Sequence[tuple[str, str, str]],
    title: str,
    *,
    zero_line: bool = False,
) -> Figure:
    """One panel per (column, panel title, y label); one line per proposal."""
    m_values = sorted(frame["M"].unique())
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
    for ax, (column, panel_title, ylabel) in zip(axes[0], panels, strict=True):
        for proposal in _proposals(frame):
            _band(ax, frame, "M", column, proposal)
        if zero_line:
            ax.axhline(0.0, color="black", linewidth=0.8, alpha=0.6)
        _m_axis(ax, m_values)
        ax.set_title(panel_title)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    _caption(fig, frame)
    return fig


def plot_log_target(auctions: pd.DataFrame, out: Path) -> list[Path]:
    frame = _primary(auctions)
    fig = _vs_m_figure(
        frame,
        [
            ("log_target_chosen_centred", "returned reply", "log π*(y) + const (centred per instance)"),
            (
                "log_target_expected_centred",
                "expectation under the allocation Σ π_j log π*(y_j)",
                "log π*(y) + const (centred per instance)",
            ),
        ],
        "Fig. 1a — log-probability of the reply under the optimal distribution π*",
    )
    return _save(fig, out, "fig1a_log_target_vs_m")


def plot_reward_gain(auctions: pd.DataFrame, out: Path) -> list[Path]:
    frame = _primary(auctions)
    fig = _vs_m_figure(
        frame,
        [
            (
                "total_reward_gain",
                "exact: same candidates, auction without her",
                "total advertiser reward gain (nats)",
            ),
            (
                "total_reward_gain_approx",
                "paper's approx.: vs candidates not naming her",
                "total advertiser reward gain (nats)",
            ),
        ],
        "Fig. 1b — advertiser reward gain from participation",
        zero_line=True,
    )
    return _save(fig, out, "fig1b_reward_gain_vs_m")


def plot_revenue(auctions: pd.DataFrame, out: Path) -> list[Path]:
    frame = _primary(auctions)
    fig = _vs_m_figure(
        frame,
        [("revenue", "payments with the offset (Thm 5.1, §5.3)", "revenue Σ_i p_i")],
        "Fig. 2 — platform revenue",
        zero_line=True,
    )
    return _save(fig, out, "fig2_revenue_vs_m")


def plot_log_ref(auctions: pd.DataFrame, out: Path) -> list[Path]:
    frame = _primary(auctions)
    fig = _vs_m_figure(
        frame,
        [
            ("log_ref_chosen", "returned reply", "log π_ref(y)"),
            ("log_ref_expected", "expectation under the allocation", "log π_ref(y)"),
        ],
        "Fig. 3 — log-probability of the reply under the reference LLM (usefulness to the user)",
    )
    return _save(fig, out, "fig3_log_ref_vs_m")


def plot_utility_gain(auctions: pd.DataFrame, out: Path) -> list[Path]:
    frame = _primary(auctions)
    m_values = sorted(frame["M"].unique())
    panels = [
        ("total_utility_gain", "with offset — exact counterfactual"),
        ("total_utility_gain_approx", "with offset — paper's approx."),
        ("total_utility_gain_without_offset", "without offset — exact counterfactual"),
        ("total_utility_gain_approx_without_offset", "without offset — paper's approx."),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(10.5, 7.6))
    for ax, (column, panel_title) in zip(axes.ravel(), panels, strict=True):
        for proposal in _proposals(frame):
            _band(ax, frame, "M", column, proposal)
        ax.axhline(0.0, color="black", linewidth=0.8, alpha=0.6)
        _m_axis(ax, m_values)
        ax.set_title(panel_title)
        ax.set_ylabel("total utility gain = reward gain − payment")
        ax.legend(fontsize=8)
    fig.suptitle("Fig. 4 — advertiser utility gain from participation, with and without the payment offset")
    fig.tight_layout()
    _caption(fig, frame)
    return _save(fig, out, "fig4_utility_gain_vs_m")


def plot_scatter(advertisers: pd.DataFrame, out: Path) -> list[Path]:
    frame = _primary(advertisers)
    m_max = int(frame["M"].max())
    frame = frame[frame["M"] == m_max]
    proposals = _proposals(frame)
    fig, axes = plt.subplots(len(proposals), 2, figsize=(10.5, 3.9 * len(proposals)), squeeze=False)
    for row, proposal in enumerate(proposals):
        subset = frame[frame["proposal"] == proposal]
        for col, (column, label) in enumerate(
            (("utility_gain", "with the offset"), ("utility_gain_without_offset", "without the offset"))
        ):
            ax = axes[row][col]
            x = subset["reward_gain"].to_numpy(dtype=float)
            y = subset[column].to_numpy(dtype=float)
            style = _style(proposal)
            ax.scatter(x, y, s=14, alpha=0.6, color=style["color"], label=style["label"])
            fit = metrics.linear_fit(x, y)
            r = metrics.pearson(x, y)
            if np.isfinite(fit.slope):
                grid = np.linspace(float(np.nanmin(x)), float(np.nanmax(x)), 50)
                ax.plot(grid, fit.slope * grid + fit.intercept, color="black", linewidth=1.2, label="fit")
            ax.set_title(
                f"{style['label']}, {label}\n"
                f"slope {fit.slope:.2f}, R² {fit.r_squared:.2f}, Pearson r {r:.2f}",
                fontsize=10,
            )
            ax.set_xlabel("advertiser reward gain (exact counterfactual, nats)")
            ax.set_ylabel("advertiser utility gain")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(f"Figs. 5-6 — utility gain vs reward gain per advertiser (M = {m_max})")
    fig.tight_layout()
    _caption(fig, frame, "one point per advertiser and run; least-squares line; over")
    return _save(fig, out, "fig5_6_utility_vs_reward_scatter")


def plot_correlation(advertisers: pd.DataFrame, out: Path) -> list[Path]:
    table = metrics.correlation_table(advertisers)
    m_values = sorted(table["M"].unique())
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.0))
    for ax, counterfactual, title in (
        (axes[0], "exact", "exact counterfactual"),
        (axes[1], "approx", "paper's approx. counterfactual"),
    ):
        part = table[table["counterfactual"] == counterfactual]
        for proposal in _proposals(part):
            rows = part[part["proposal"] == proposal].sort_values("M")
            style = _style(proposal)
            ax.plot(
                rows["M"],
                rows["pearson_with_offset"],
                color=style["color"],
                marker=style["marker"],
                label=f"{style['label']}, with offset",
            )
            ax.plot(
                rows["M"],
                rows["pearson_without_offset"],
                color=style["color"],
                marker=style["marker"],
                linestyle="--",
                markerfacecolor="white",
                label=f"{style['label']}, without offset",
            )
        ax.axhline(0.0, color="black", linewidth=0.8, alpha=0.6)
        _m_axis(ax, m_values)
        ax.set_ylim(-1.05, 1.05)
        ax.set_title(title)
        ax.set_ylabel("Pearson r (reward gain, utility gain)")
        ax.legend(fontsize=7)
    fig.suptitle("Fig. 7 — correlation of advertiser reward gain and utility gain (paper: ≈0.8 vs ≈0.4)")
    fig.tight_layout()
    _caption(fig, _primary(advertisers), "Pearson r over all advertisers of")
    return _save(fig, out, "fig7_correlation_vs_m")


def plot_fraction_named(auctions: pd.DataFrame, out: Path) -> list[Path]:
    frame = _primary(auctions)
    fig = _vs_m_figure(
        frame,
        [
            ("fraction_named_chosen", "returned reply", "fraction of advertisers named"),
            ("fraction_named_expected", "expectation under the allocation", "fraction of advertisers named"),
            ("fraction_named_candidates", "all M candidates (the proposal's rate)", "fraction named"),
        ],
        "Fig. 12 — fraction of advertisers named in the reply (App. C.7)",
    )
    return _save(fig, out, "fig12_fraction_named_vs_m")


def plot_ess(auctions: pd.DataFrame, out: Path) -> list[Path]:
    frame = _primary(auctions)
    fig = _vs_m_figure(
        frame,
        [
            ("ess", "effective sample size 1/Σπ²", "ESS"),
            ("ess_fraction", "ESS / M", "ESS / M"),
        ],
        "Effective sample size of the allocation",
    )
    return _save(fig, out, "ess_vs_m")


def plot_tau_sweep(auctions: pd.DataFrame, out: Path) -> list[Path]:
    m_max = int(auctions["M"].max())
    frame = auctions[auctions["M"] == m_max]
    multipliers = sorted(frame["tau_multiplier"].unique())
    panels = [
        ("log_target_expected_centred", "log π*_τ, centred per (instance, τ)", "E_π[log π*_τ] + const"),
        ("log_ref_expected", "log π_ref (usefulness to the user)", "E_π[log π_ref(y)]"),
        ("total_reward_gain", "advertiser reward gain (exact)", "total reward gain (nats)"),
        ("revenue", "revenue", "revenue Σ_i p_i"),
        ("fraction_named_expected", "fraction of advertisers named", "E_π[fraction named]"),
        ("ess", "effective sample size", "ESS"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(15, 7.6))
    for ax, (column, title, ylabel) in zip(axes.ravel(), panels, strict=True):
        for proposal in _proposals(frame):
            _band(ax, frame, "tau_multiplier", column, proposal)
        ax.set_xscale("log", base=2)
        ax.set_xticks(multipliers)
        ax.set_xticklabels([f"{m:g}" for m in multipliers])
        ax.set_xlabel("τ / τ_paper(n)   (τ_paper = 1 for n ≤ 2, n/2 above)")
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"τ sweep at M = {m_max} (same candidates for every τ; log π*_τ levels are not comparable across τ,"
        " only the gap between proposals)"
    )
    fig.tight_layout()
    _caption(fig, frame)
    return _save(fig, out, "tau_sweep")


def write_all_plots(out: Path, auctions: pd.DataFrame, advertisers: pd.DataFrame) -> list[Path]:
    """Every figure, PNG and SVG, into ``out``; returns the paths written."""
    paths: list[Path] = []
    paths += plot_log_target(auctions, out)
    paths += plot_reward_gain(auctions, out)
    paths += plot_revenue(auctions, out)
    paths += plot_log_ref(auctions, out)
    paths += plot_utility_gain(auctions, out)
    paths += plot_scatter(advertisers, out)
    paths += plot_correlation(advertisers, out)
    paths += plot_fraction_named(auctions, out)
    paths += plot_ess(auctions, out)
    paths += plot_tau_sweep(auctions, out)
    return paths
