"""How a re-score compares (issue 35): engine identities, tolerances, and log-probs bit for bit.

Job, pure (no I/O): `identity_checks` (is the worker the announced model; which recorded engines it is
the same as), `Strictness` (for each scored sequence and each drawn candidate: bit for bit when the
engine that produced it has the worker's identity, else within the tolerance), `compare_values` (the
check of one field over the candidates, naming the first that disagrees and the max |diff|).
Imports `app.verification.report` only; see docs/DESIGN.md § Verifiable auctions.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.verification.report import Check

MODEL_FIELDS = ("model", "weights_sha256")  # what makes a worker "the announced model"
# Nats per reply token (|Δ log-prob of the reply| / its tokens) allowed between engines of one model
# whose identities differ (docs/DESIGN.md § Verifiable auctions). Both fp32 on CPU (other threads,
# batching, CPU family): float noise, ≤ ~3e-5 nats per reply measured (bench/numerics.py). bf16 on
# either side, or a GPU: other kernels round bf16 products differently; bf16 vs fp32 measured up to
# 0.69 nats on one SmolLM2 token (docs/results/dtype.txt) and 0.26 on tiny-random (test_rescore.py).
FP32_TOLERANCE = 1e-4
BF16_TOLERANCE = 0.75


def default_tolerance(recorded: Sequence[dict[str, Any]], worker: dict[str, Any]) -> float:
    """Nats per reply token allowed between another engine and the recorded ones (by dtype)."""
    identities = [*recorded, worker]
    fp32 = all(i.get("dtype") == "float32" and i.get("device") == "cpu" for i in identities)
    return FP32_TOLERANCE if fp32 else BF16_TOLERANCE


def identity_differences(recorded: dict[str, Any], worker: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted paths where two identities differ, with both values ("kernels.threads: 1 ≠ 2")."""
    found: list[str] = []
    for key in sorted(set(recorded) | set(worker)):
        left, right = recorded.get(key), worker.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            found.extend(identity_differences(left, right, f"{prefix}{key}."))
        elif left != right:
            found.append(f"{prefix}{key}: {left!r} ≠ {right!r}")
    return found


def same_bits(left: float, right: float) -> bool:
    """Whether two float64 values are the same bits (0.0 and -0.0 differ; a NaN equals itself)."""
    return struct.pack("<d", left) == struct.pack("<d", right)


@dataclass(frozen=True)
class Strictness:
    """Per recorded engine (the record's `engine.identities` order): whether it is the worker's own
    identity (bit for bit), else `tolerance` nats per token; and where each engine worked."""

    same: list[bool]
    tolerance: float
    scored: list[list[int]]  # engine.scored: [engine, first sequence, stop]
    generated: list[list[int]]  # engine.generated: [engine, share, first candidate, stop]
    batch_invariant: bool = True  # every recorded engine's rows are independent of their batch

    def _of(self, engine: int | None) -> float | None:
        # engine None: scored in a batch this view cannot send again
        exact = all(self.same) and self.batch_invariant if engine is None else self.same[engine]
        return None if exact else self.tolerance

    def sequence(self, index: int | None) -> float | None:
        """Sequence `index` of the scoring batch (None: unknown, as in a sealed view, whose batches
        differ from the gateway's: bit for bit only when every recorded engine is the worker's and
        batch-invariant, `kernels.path` "invariant"; elsewhere a row's bits depend on its batch)."""
        owner = None if index is None else next((k for k, a, b in self.scored if a <= index < b), None)
        return self._of(owner)

    def draw(self, candidate: int) -> float | None:
        owner = next((k for k, _, a, b in self.generated if a <= candidate < b), None)
        return self._of(owner)


def identity_checks(
    engine: dict[str, Any], worker: dict[str, Any], tolerance: float | None
) -> tuple[list[Check], Strictness | None]:
    """`rescore.engine` (the worker is the announced model) and `rescore.mode` (which recorded engines
    it is, bit for bit; the others' values within the tolerance, and the fields that differ)."""
    recorded = [entry.get("identity", {}) for entry in engine.get("identities", [])]
    if "unread" in worker:
        return [Check("rescore.engine", False, f"the worker's identity: {worker['unread']}")], None
    for index, identity in enumerate(recorded):
        if "unread" in identity:
            problem = f"engine.identities[{index}] was not read when the auction ran: {identity['unread']}"
            return [Check("rescore.engine", False, problem)], None
        for field in MODEL_FIELDS:
            if identity.get(field) != worker.get(field):
                problem = (
                    f"engine.identities[{index}].identity.{field}: the record says "
                    f"{identity.get(field)!r}, the worker is {worker.get(field)!r}: not the announced model"
                )
                return [Check("rescore.engine", False, problem)], None
    model = Check("rescore.engine", True, f"the worker serves {worker.get('model')!r}, weights as recorded")
    allowed = default_tolerance(recorded, worker) if tolerance is None else tolerance
    same = [not identity_differences(identity, worker) for identity in recorded]
    invariant = all((identity.get("kernels") or {}).get("path") == "invariant" for identity in recorded)
    strictness = Strictness(same, allowed, engine.get("scored", []), engine.get("generated", []), invariant)
    if all(same):
        return [model, Check("rescore.mode", True, "same engine identity: bit for bit")], strictness
    parts = [
        f"engine {k}: {'; '.join(identity_differences(identity, worker))}"
        for k, identity in enumerate(recorded)
        if not same[k]
    ]
    detail = f"another engine identity ({' | '.join(parts)}): its values within {allowed:g} nats per token"
    if any(same):
        detail += f"; engine(s) {[k for k, s in enumerate(same) if s]}: the worker's, bit for bit"
    return [model, Check("rescore.mode", True, detail)], strictness


def compare_values(
    name: str,
    stored: Sequence[tuple[str, float]],
    fresh: Sequence[float],
    tolerances: Sequence[float | None],
    tokens: Sequence[int],
) -> Check:
    """`stored` [(label, value)] against `fresh`, each bit for bit (its tolerance None) or within its
    tolerance in nats per reply token (`tokens`: each value's reply length, at least 1)."""
    diffs = [abs(value - again) for (_, value), again in zip(stored, fresh, strict=True)]
    per_token = [diff / max(1, count) for diff, count in zip(diffs, tokens, strict=True)]
    worst = f"max |diff| {max(diffs, default=0.0):.3g}, {max(per_token, default=0.0):.3g} per token"
    rows = zip(stored, fresh, diffs, per_token, tolerances, strict=True)
    for (label, value), again, diff, rate, allowed in rows:
        if not (same_bits(value, again) if allowed is None else rate <= allowed):
            rule = "bit for bit" if allowed is None else f"within {allowed:g} nats per token"
            return Check(
                name,
                False,
                f"{label}: recorded {value!r}, re-scored {again!r} (|diff| {diff:.3g}; {rule}); "
                f"{worst} over {len(stored)} values",
            )
    exact = sum(allowed is None for allowed in tolerances)
    if exact == len(stored):
        rule = "bit for bit"
    else:
        rule = f"within {max(t for t in tolerances if t is not None):g} nats per token"
        rule = f"{exact} bit for bit, {len(stored) - exact} {rule}" if exact else rule
    return Check(name, True, f"{len(stored)} values agree {rule} ({worst})")
