"""What `mosaic verify` found: one `Check` per rule, each naming what disagrees when it fails.

Job: the result types shared by every part of verification (the signature and commitments, the
transparency log's proofs, the recomputed mechanism, the re-scored candidates). Pure: no I/O, no web
types. See docs/DESIGN.md § Verifiable auctions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

View = Literal["full", "sealed"]


@dataclass(frozen=True)
class Check:
    """One rule checked. `name` is stable and machine-readable ("signature", "inclusion",
    "payments", "rescore.log_ref", ...); `detail` says what was compared and, on failure, what
    disagrees (the field, the stored value and the recomputed one)."""

    name: str
    ok: bool
    detail: str


@dataclass
class VerificationReport:
    """Every check run on one auction, in the order they ran."""

    auction_id: str
    view: View
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    def failures(self) -> list[Check]:
        return [check for check in self.checks if not check.ok]

    def add(self, name: str, ok: bool, detail: str) -> Check:
        check = Check(name=name, ok=ok, detail=detail)
        self.checks.append(check)
        return check
