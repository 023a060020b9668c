"""Pure metric functions of the evaluation (`mosaic evaluate`): numpy and pandas only, no I/O.

Shapes follow `app.mechanism`: ``n`` advertisers, ``M`` candidates; ``rewards`` is ``(n, M)``,
``log_ref`` / ``log_proposal`` / ``probabilities`` are ``(M,)``. The quantities are those the paper
plots (MECHANISM.md § "Quantities the paper plots"):

* log π*(y) up to its normaliser, ``log π_ref(y) + Σ_i r_i(y)/τ`` (`app.mechanism.log_target_unnormalised`),
  reported centred per instance (`centre_by_group`) because the normaliser is unknown;
* an advertiser's **reward gain** from participation, ``R_i − R_i^{-i}``, against two counterfactuals:
  - exact (`counterfactual_rewards`): her expected reward in the auction run on the *same* candidates
    without her reward, ``Σ_j softmax(ℓ − r_i/τ)_j · r_i(y_j)``;
  - the paper's approximation (`approximate_counterfactual_rewards`): her mean reward over the
    candidates that do not name her (NaN when every candidate names her);
* utility gain = reward gain − payment (with the offset, and without: ``p_i = R_i − τ·LSE(ℓ)``);
* which advertisers a reply names (`names_matrix`, case-insensitive substring match);
* summaries: mean with a normal 95% confidence interval (`mean_ci`, `summarise`), Pearson
  correlation (`pearson`) and a least-squares line with its R² (`linear_fit`); the Pearson table of
  reward gain against utility gain per (proposal, M) that Fig. 7 plots (`correlation_table`).

Imports numpy, pandas and `app.mechanism` only (the bottom of the package: nothing else here).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from app import mechanism

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

# Two-sided 95% quantile of the standard normal: the confidence intervals are mean ± Z·sd/√n.
Z_95 = 1.959963984540054

__all__ = [
    "Z_95",
    "LinearFit",
    "MeanCI",
    "approximate_counterfactual_rewards",
    "centre_by_group",
    "correlation_table",
    "counterfactual_rewards",
    "expectation",
    "linear_fit",
    "mean_ci",
    "names_advertiser",
    "names_matrix",
    "pearson",
    "reward_gain",
    "summarise",
    "utility_gain",
]


def _vector(name: str, value: ArrayLike) -> FloatArray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    return array


def expectation(probabilities: ArrayLike, values: ArrayLike) -> float:
    """Σ_j π_j · v_j: a candidate quantity's expectation under the allocation (less noisy than the draw)."""
    pi = _vector("probabilities", probabilities)
    v = _vector("values", values)
    if pi.shape != v.shape:
        raise ValueError(f"probabilities {pi.shape} and values {v.shape} differ in shape")
    return float(pi @ v)


def counterfactual_rewards(
    rewards: ArrayLike, log_ref: ArrayLike, log_proposal: ArrayLike, tau: float
) -> FloatArray:
    """Each advertiser's expected reward in the auction run on the same candidates without her, (n,).

    Without advertiser i the log-weights are ``β_{-i} = ℓ − r_i/τ``, the allocation is
    ``π^{-i} = softmax(β_{-i})`` and her expected reward is ``Σ_j π^{-i}_j r_i(y_j)``. This is the
    exact counterfactual *for a fixed candidate set*: it captures how the allocation moves towards
    her, not how the candidates themselves would differ (the context-aware prompt names her).
    """
    reward_matrix = np.asarray(rewards, dtype=np.float64)
    ell = mechanism.log_weights(reward_matrix, log_ref, log_proposal, tau)
    beta = ell[None, :] - reward_matrix / float(tau)
    beta -= beta.max(axis=1, keepdims=True)
    weights = np.exp(beta)
    weights /= weights.sum(axis=1, keepdims=True)
    result: FloatArray = (weights * reward_matrix).sum(axis=1)
    return result


def approximate_counterfactual_rewards(rewards: ArrayLike, named: ArrayLike) -> FloatArray:
    """The paper's approximation of R_i without her: her mean reward over candidates not naming her, (n,).

    ``named`` is the (n, M) boolean matrix of `names_matrix`. NaN for an advertiser every candidate
    names (no candidate to average over).
    """
    reward_matrix = np.asarray(rewards, dtype=np.float64)
    mask = np.asarray(named, dtype=bool)
    if reward_matrix.ndim != 2 or mask.shape != reward_matrix.shape:
        raise ValueError(f"rewards {reward_matrix.shape} and named {mask.shape} must be the same (n, M)")
    keep = ~mask
    counts = keep.sum(axis=1)
    sums = np.where(keep, reward_matrix, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        result: FloatArray = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return result


def reward_gain(expected_rewards: ArrayLike, counterfactual: ArrayLike) -> FloatArray:
    """R_i − R_i^{-i}: what participating adds to her expected reward, (n,)."""
    result: FloatArray = np.asarray(expected_rewards, dtype=np.float64) - np.asarray(
        counterfactual, dtype=np.float64
    )
    return result


def utility_gain(gain: ArrayLike, payments: ArrayLike) -> FloatArray:
    """Reward gain − payment: her utility gain from participating, (n,).

    With the offset payments and the exact counterfactual this equals ``U_i − Σ_j π^{-i}_j r_i(y_j)``,
    which is ≥ 0 by Jensen's inequality (``U_i = τ log Σ_j π^{-i}_j exp(r_i(y_j)/τ)``, Lemma 5.2).
    """
    result: FloatArray = np.asarray(gain, dtype=np.float64) - np.asarray(payments, dtype=np.float64)
    return result


def names_advertiser(text: str, name: str) -> bool:
    """Whether a reply names an advertiser: case-insensitive substring match of her name."""
    needle = name.strip().casefold()
    return bool(needle) and needle in text.casefold()


def names_matrix(texts: Sequence[str], names: Sequence[str]) -> BoolArray:
    """(n, M) matrix: does candidate j name advertiser i."""
    result: BoolArray = np.array(
        [[names_advertiser(text, name) for text in texts] for name in names], dtype=bool
    ).reshape(len(names), len(texts))
    return result


def centre_by_group(frame: pd.DataFrame, column: str, by: Sequence[str]) -> pd.Series:
    """``column`` minus its mean within each group of ``by`` (e.g. per instance): removes the unknown
    per-instance normaliser of log π* while keeping every difference inside an instance."""
    values = frame[column].astype(float)
    centred: pd.Series = values - frame.groupby(list(by), sort=False)[column].transform("mean")
    return centred


@dataclass(frozen=True)
class MeanCI:
    mean: float
    half_width: float  # Z_95 · sd / √n (sample sd); NaN with fewer than two values
    count: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


def mean_ci(values: ArrayLike) -> MeanCI:
    """Mean and normal 95% confidence half-width of the finite values (NaNs are dropped)."""
    array = np.asarray(values, dtype=np.float64).ravel()
    array = array[np.isfinite(array)]
    count = int(array.size)
    if count == 0:
        return MeanCI(math.nan, math.nan, 0)
    mean = float(array.mean())
    if count < 2:
        return MeanCI(mean, math.nan, 1)
    half = Z_95 * float(array.std(ddof=1)) / math.sqrt(count)
    return MeanCI(mean, half, count)


def summarise(frame: pd.DataFrame, by: Sequence[str], column: str) -> pd.DataFrame:
    """Per group of ``by``: ``mean``, ``ci`` (95% half-width), ``low``, ``high``, ``count`` of ``column``."""
    records = []
    for key, group in frame.groupby(list(by), sort=True):
        stats = mean_ci(group[column].to_numpy(dtype=np.float64))
        keys = key if isinstance(key, tuple) else (key,)
        records.append(
            {
                **dict(zip(by, keys, strict=True)),
                "mean": stats.mean,
                "ci": stats.half_width,
                "low": stats.low,
                "high": stats.high,
                "count": stats.count,
            }
        )
    return pd.DataFrame.from_records(records, columns=[*by, "mean", "ci", "low", "high", "count"])


def _finite_pairs(x: ArrayLike, y: ArrayLike) -> tuple[FloatArray, FloatArray]:
    xs = np.asarray(x, dtype=np.float64).ravel()
    ys = np.asarray(y, dtype=np.float64).ravel()
    if xs.shape != ys.shape:
        raise ValueError(f"x {xs.shape} and y {ys.shape} differ in shape")
    keep = np.isfinite(xs) & np.isfinite(ys)
    return xs[keep], ys[keep]


def pearson(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson correlation over the pairs where both are finite; NaN with < 2 pairs or no variance."""
    xs, ys = _finite_pairs(x, y)
    if xs.size < 2:
        return math.nan
    dx = xs - xs.mean()
    dy = ys - ys.mean()
    denominator = math.sqrt(float(dx @ dx) * float(dy @ dy))
    if denominator == 0.0:
        return math.nan
    return float(dx @ dy) / denominator


@dataclass(frozen=True)
class LinearFit:
    slope: float
    intercept: float
    r_squared: float
    count: int


def linear_fit(x: ArrayLike, y: ArrayLike) -> LinearFit:
    """Least-squares line y ≈ slope·x + intercept and its R² (finite pairs only; NaN if undefined)."""
    xs, ys = _finite_pairs(x, y)
    count = int(xs.size)
    if count < 2:
        return LinearFit(math.nan, math.nan, math.nan, count)
    dx = xs - xs.mean()
    sxx = float(dx @ dx)
    if sxx == 0.0:
        return LinearFit(math.nan, math.nan, math.nan, count)
    slope = float(dx @ (ys - ys.mean())) / sxx
    intercept = float(ys.mean()) - slope * float(xs.mean())
    residual = ys - (slope * xs + intercept)
    dy = ys - ys.mean()
    syy = float(dy @ dy)
    r_squared = 1.0 - float(residual @ residual) / syy if syy > 0.0 else math.nan
    return LinearFit(slope, intercept, r_squared, count)


def correlation_table(advertisers: pd.DataFrame) -> pd.DataFrame:
    """Pearson r of reward gain and utility gain, with/without offset, per (proposal, M, counterfactual)."""
    frame = advertisers[advertisers["primary_tau"].astype(bool)]
    records = []
    for (proposal, m), group in frame.groupby(["proposal", "M"], sort=True):
        for counterfactual, gain, with_offset, without_offset in (
            ("exact", "reward_gain", "utility_gain", "utility_gain_without_offset"),
            ("approx", "reward_gain_approx", "utility_gain_approx", "utility_gain_approx_without_offset"),
        ):
            records.append(
                {
                    "proposal": proposal,
                    "M": m,
                    "counterfactual": counterfactual,
                    "pearson_with_offset": pearson(group[gain], group[with_offset]),
                    "pearson_without_offset": pearson(group[gain], group[without_offset]),
                    "count": int((group[gain].notna()).sum()),
                }
            )
    return pd.DataFrame.from_records(records)
