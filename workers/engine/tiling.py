"""Row-invariant low-precision products on CPU: :func:`tiled_linear` and the per-weight tile plans it
uses, measured on the machine that runs them (:func:`calibrate`). Imports torch only.

Invariant: ``tiled_linear(x, w, b)[i]`` depends on ``x[i]`` (and w, b) alone — not on how many other
rows share the call — so decoding (a few rows per step) and scoring (thousands of rows) give a token
the same bits. The products run on tiles of ``min_rows``..``max_rows`` rows (short tiles padded with
zero rows), inside a range where the CPU's bf16 GEMM gives one set of bits whatever the row count M.

That range is the machine's: on Zen 4 oneDNN gives one set of bits for 8 ≤ M ≤ 32 and others above,
and products too small for oneDNN (M·N·K ≲ 16³) run PyTorch's own GEMV/GEMM with other bits again
(:data:`DEFAULT_PLAN`); on Zen 5 every M from 1 to 512 gives one set of bits for SmolLM2's shapes. So
:func:`calibrate` measures each weight shape once per process: a plan (largest tile first) is taken
only if every probed row count M in its range gives each of ≥ 2^17 outputs the bits the plan's own
tiles give them (a reduction-order change flips ~1e-4 of bf16 outputs, so it shows); else the Zen 4
plan. It is measured at the process's torch thread count, which the engine does not change after
it starts (a GEMM may split its work differently at another count). Larger tiles stream each weight
fewer times: a 256-row tile takes about half the time per row of eight 32-row tiles here.
``tests/integration/test_invariance.py`` checks the property with the plans in force, over 600 rows.
See docs/DESIGN.md (the worker engine) for the invariants and figures.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TilePlan:
    """Products on tiles of ``min_rows``..``max_rows`` rows (fewer rows: padded with zero rows)."""

    min_rows: int
    max_rows: int


DEFAULT_PLAN = TilePlan(8, 32)  # Zen 4: oneDNN's small-M kernel, one set of bits for 8 ≤ M ≤ 32
CANDIDATE_PLANS = (TilePlan(1, 256), TilePlan(8, 256), TilePlan(8, 64))  # tried in this order
PROBE_ROWS = 64  # at least this many probe rows, and at least PROBE_OUTPUTS outputs per row count:
PROBE_OUTPUTS = 1 << 17  # a reduction-order change flips ~1e-4 of bf16 outputs, so it shows here
_ROW_COUNTS = (1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 48, 63, 64, 65, 100, 127, 128, 129)

_plans: dict[tuple[int, int, torch.dtype, bool], TilePlan] = {}


def _key(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[int, int, torch.dtype, bool]:
    return int(weight.shape[0]), int(weight.shape[1]), weight.dtype, bias is not None


def plan_for(weight: torch.Tensor, bias: torch.Tensor | None = None) -> TilePlan:
    """The calibrated plan of this weight's shape (:data:`DEFAULT_PLAN` before calibration)."""
    return _plans.get(_key(weight, bias), DEFAULT_PLAN)


def calibrated_plans() -> dict[tuple[int, int, torch.dtype, bool], TilePlan]:
    """The plans measured so far in this process, by (out, in, dtype, bias): part of the worker's
    identity (``workers.identity``), since another plan may give other bits."""
    return dict(_plans)


def tiled_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` of rows x [N, K] whose row i's bits depend on row i only (see the module docs)."""
    return _tiled(x, weight, bias, plan_for(weight, bias))


def _tiled(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, plan: TilePlan) -> torch.Tensor:
    rows, top = x.shape[0], plan.max_rows
    if rows > top:
        return torch.cat([_tiled(x[s : s + top], weight, bias, plan) for s in range(0, rows, top)])
    if rows < plan.min_rows:
        return F.linear(F.pad(x, (0, 0, 0, plan.min_rows - rows)), weight, bias)[:rows]
    return F.linear(x, weight, bias)


def _holds(weight: torch.Tensor, bias: torch.Tensor | None, plan: TilePlan, x: torch.Tensor) -> bool:
    """Every probed row count in the plan's range gives each of x's rows its bits in the plan's tiles."""
    reference = _tiled(x, weight, bias, plan)
    need = max(PROBE_ROWS, -(-PROBE_OUTPUTS // weight.shape[0]))  # rows to cover per row count
    for count in (m for m in (*_ROW_COUNTS, plan.max_rows) if plan.min_rows <= m <= plan.max_rows):
        for start in range(0, min(x.shape[0], max(need, count)) - count + 1, count):
            out = F.linear(x[start : start + count], weight, bias)
            if not torch.equal(out, reference[start : start + count]):
                return False
    if plan.min_rows > 1:  # padded short tiles: the bits of the same rows in a full tile
        for count in range(1, plan.min_rows):
            if not torch.equal(_tiled(x[:count], weight, bias, plan), reference[:count]):
                return False
    return True


def calibrate(weight: torch.Tensor, bias: torch.Tensor | None = None) -> TilePlan:
    """Measure (once per weight shape, dtype and bias presence) the largest plan that holds here."""
    key = _key(weight, bias)
    if key in _plans:
        return _plans[key]
    started = time.perf_counter()
    gen = torch.Generator().manual_seed(key[0] * 31 + key[1])
    rows = max(PROBE_ROWS, -(-PROBE_OUTPUTS // key[0]), *(p.max_rows for p in CANDIDATE_PLANS))
    x = torch.randn((rows, key[1]), generator=gen).to(weight.dtype)
    with torch.inference_mode():
        chosen = next((plan for plan in CANDIDATE_PLANS if _holds(weight, bias, plan, x)), DEFAULT_PLAN)
        if chosen is DEFAULT_PLAN and not _holds(weight, bias, DEFAULT_PLAN, x):
            log.warning("bf16 products of shape %s are not row-invariant in %s here", key[:2], chosen)
    _plans[key] = chosen
    elapsed_ms = 1e3 * (time.perf_counter() - started)
    log.info("tile plan %s for weight %sx%s (%.0f ms)", chosen, key[0], key[1], elapsed_ms)
    return chosen
