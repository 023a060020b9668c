"""`mosaic compare`'s report with two model families: figures people can read (issue 39), the
conclusions per family, and a report redrawn from its committed rows."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from app.comparison.families import claims_table, common_runs, families_section, named_table
from app.comparison.mechanisms import LABELS, MECHANISMS
from app.comparison.report import write_report
from app.comparison.rows import COLUMNS
from app.comparison.run import read_results, rewrite_report

matplotlib.use("Agg")

MODELS = ("smollm2", "gemma3-270m")
PROPOSALS = ("context", "reference")


def _frame(models: tuple[str, ...] = MODELS, seeds: int = 3, instances: int = 3) -> pd.DataFrame:
    """Rows for every (model, instance, seed, proposal, M, mechanism), with the structure of a real
    run: MOSAIC and VCG DSIC, first-price with a gap; gemma's MOSAIC revenue falls with M."""
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    runs = itertools.product(models, range(1, instances + 1), range(seeds))
    grid = itertools.product(runs, PROPOSALS, (1, 2, 4, 8), MECHANISMS)
    for (model, instance, seed), proposal, m, name in grid:
        grows = m if model == "smollm2" else 1.0 / m
        gap = 3.0 + rng.random() if name == "first_price_best_of_m" else 0.0
        rows.append(
            {
                "model": model,
                "instance_id": str(instance),
                "seed": seed,
                "proposal": proposal,
                "M": m,
                "mechanism": name,
                "n_advertisers": 2,
                "tau": 1.0,
                "revenue": grows * (name == "mosaic") + rng.normal(0, 0.01),
                "reward_gain": (5.0 if proposal == "context" else 1.0) + rng.normal(0, 0.1),
                "welfare": -50.0 + rng.normal(),
                "user_log_ref": -60.0 + rng.normal(),
                "user_gap": (10.0 if "best_of_m" in name else -5.0) + rng.normal(0, 0.1),
                "ess": 1.0,
                "candidates_named": 0.6 if model == "smollm2" else 0.2,
                "reply_named": 0.5,
                "incentive_gap": gap,
                "compute_us": 10.0,
            }
        )
    return pd.DataFrame.from_records(rows, columns=COLUMNS)


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Figure]:
    """Every figure the report saves (captured at its first savefig)."""
    captured: list[Figure] = []
    original = Figure.savefig

    def record(self: Figure, *args: Any, **kwargs: Any) -> None:
        if self not in captured:
            captured.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    write_report(_frame(), tmp_path, {"max_tokens": 48, "optimise_evaluations": 10})
    return captured


def _series_styles(figure: Figure) -> dict[str, tuple[str, str]]:
    """Legend label -> (colour, marker) of the figure's legend entries."""
    styles = {}
    legends = [*figure.legends, *(ax.get_legend() for ax in figure.axes if ax.get_legend() is not None)]
    for legend in legends:
        for handle, text in zip(legend.legend_handles, legend.get_texts(), strict=True):
            colour = matplotlib.colors.to_hex(handle.get_color())  # type: ignore[union-attr]
            styles[text.get_text()] = (colour, str(handle.get_marker()))  # type: ignore[union-attr]
    return styles


def test_each_mechanism_has_one_colour_and_marker_in_every_figure(figures: list[Figure]) -> None:
    """Invariant: a mechanism is drawn with one colour and one marker, the same in every figure, and
    no two mechanisms share either (the old plots cycled 10 colours over 12 series)."""
    assert len(figures) >= 4
    seen: dict[str, tuple[str, str]] = {}
    for figure in figures:
        styles = _series_styles(figure)
        labels = {LABELS[name] for name in MECHANISMS}
        assert labels <= set(styles), sorted(styles)
        for label in labels:
            assert seen.setdefault(label, styles[label]) == styles[label], label
    colours = [seen[LABELS[name]][0] for name in MECHANISMS]
    markers = [seen[LABELS[name]][1] for name in MECHANISMS]
    assert len(set(colours)) == len(colours) and len(set(markers)) == len(markers)


def test_models_and_proposals_are_panels_with_the_legend_off_the_data(figures: list[Figure]) -> None:
    """Invariant: one panel per (model, proposal), each titled with both; the legend's box overlaps no
    panel; every axis names its quantity with its unit in parentheses."""
    for figure in figures:
        canvas = FigureCanvasAgg(figure)  # the figure was closed after saving
        canvas.draw()
        renderer = canvas.get_renderer()
        titles = sorted(ax.get_title() for ax in figure.axes)
        assert len(figure.axes) == len(MODELS) * len(PROPOSALS), titles
        for model in MODELS:
            for proposal in PROPOSALS:
                assert any(model in t and proposal in t for t in titles), titles
        legends = [*figure.legends, *(ax.get_legend() for ax in figure.axes if ax.get_legend() is not None)]
        assert legends
        for legend in legends:
            box = legend.get_window_extent(renderer)
            for ax in figure.axes:
                assert not box.overlaps(ax.get_window_extent(renderer)), ax.get_title()
        labelled = [ax for ax in figure.axes if ax.get_ylabel()]
        assert labelled and all("(" in ax.get_ylabel() and ")" in ax.get_ylabel() for ax in labelled)
        assert all("(" in ax.get_xlabel() for ax in figure.axes if ax.get_xlabel())


def test_claims_say_which_family_each_conclusion_holds_on() -> None:
    """Invariant: a conclusion is marked as holding on both families only when it holds on each model's
    own rows; MOSAIC's revenue grows with M on one model here and falls on the other."""
    table = claims_table(_frame()).set_index("conclusion")
    grows = table.loc["MOSAIC's revenue grows with M (context candidates)"]
    assert grows["holds on"] == "smollm2" and grows["gemma3-270m"].startswith("no")
    dsic = table.loc["MOSAIC and best-of-M + VCG are DSIC: incentive gap 0 up to rounding at every M"]
    assert dsic["holds on"] == "both"
    first_price = table.loc["first-price best-of-M is not DSIC (gap's 95% CI above 0)"]
    assert first_price["holds on"] == "both"


def test_families_are_compared_on_the_runs_both_have_and_named_shares_per_model() -> None:
    """Invariant: the cross-family table uses only the (instance, seed) runs every model has; the share
    of candidates naming an advertiser is reported per model and proposal."""
    frame = pd.concat([_frame(("smollm2",), seeds=3), _frame(("gemma3-270m",), seeds=1, instances=2)])
    shared = common_runs(frame)
    runs = set(map(tuple, shared[["instance_id", "seed"]].drop_duplicates().to_numpy()))
    assert runs == {("1", 0), ("2", 0)}
    section = "\n".join(families_section(frame))
    assert "| smollm2, all 9 runs |" in section  # its own report's verdicts, beside the shared ones
    assert "conclusions hold on both families" in section
    named = named_table(frame).set_index(["model", "proposal"])
    assert named.loc[("smollm2", "context"), "candidates naming an advertiser"].startswith("0.6")
    assert named.loc[("gemma3-270m", "context"), "runs"] == 2


def test_a_committed_run_is_redrawn_and_joined_by_another_family(tmp_path: Path) -> None:
    """Invariant: `mosaic compare-report` redraws a directory from its compare.csv (rows from before the
    model column get the run's model), and --beside adds another model's rows, replacing older ones."""
    old, other = tmp_path / "old", tmp_path / "other"
    for directory, model in ((old, "smollm2"), (other, "gemma3-270m")):
        directory.mkdir()
        frame = _frame((model,))
        if model == "smollm2":
            frame = frame.drop(columns="model")  # a compare.csv written before issue 39
        frame.to_csv(directory / "compare.csv", index=False)
        info = {"model_names": [model], "max_tokens": 48, "optimise_evaluations": 10}
        (directory / "compare.json").write_text(json.dumps(info), encoding="utf-8")
    rewrite_report(old)
    assert "More than one LLM" in (old / "compare.md").read_text(encoding="utf-8")
    rewrite_report(old, [other])
    rewrite_report(old, [other])  # twice: the other model's rows are replaced, not duplicated
    frame, info = read_results(old)
    assert sorted(frame["model"].unique()) == sorted(MODELS)
    assert len(frame) == 2 * len(_frame(("smollm2",)))
    report = (old / "compare.md").read_text(encoding="utf-8")
    assert "which conclusions hold on both" in report and "# gemma3-270m" in report
    assert (old / "named_vs_m.png").stat().st_size > 0
    assert info["beside"][-1]["model_names"] == ["gemma3-270m"]
