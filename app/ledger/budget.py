"""A campaign's budget ledger: the shapes of its state, limits, reservations and pacing step.

Pure dataclasses (standard library only); the Redis side (reserve, post, void, the pacing step in
the same script) is built on them. Money is integer micro-units. See docs/DESIGN.md § The ad-server
layer.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BudgetLimits", "BudgetState", "PacingStep", "Reservation"]


@dataclass(frozen=True)
class BudgetLimits:
    """A campaign's budget: daily (its own calendar day) and/or total, micro-units; None = no limit."""

    daily_micro: int | None
    total_micro: int | None


@dataclass(frozen=True)
class BudgetState:
    """One campaign's counters for one day, as read before an auction."""

    day: str
    spent_today: int
    reserved_today: int
    spent_total: int
    reserved_total: int
    auctions_today: int  # reservations posted (auctions whose charge was billed, 0 incl.)
    auctions_total: int
    charged_total: int  # posts with amount > 0
    mu: float  # pacing state (α = 1/(1+μ)); 0.0 when new

    def remaining(self, limits: BudgetLimits) -> int | None:
        """min over daily/total of limit − spent − reserved, never below 0; None = no limit."""
        left: list[int] = []
        if limits.daily_micro is not None:
            left.append(limits.daily_micro - self.spent_today - self.reserved_today)
        if limits.total_micro is not None:
            left.append(limits.total_micro - self.spent_total - self.reserved_total)
        return max(0, min(left)) if left else None


@dataclass(frozen=True)
class Reservation:
    """An amount held on a campaign's budget key for one auction until posted, voided or expired."""

    campaign_id: str
    auction_id: str
    amount_micro: int
    limits: BudgetLimits
    day: str
    expires_at_ms: int


@dataclass(frozen=True)
class PacingStep:
    """μ ← clip(μ − ε·(ρ − z)/ρ, 0, μ̄) after a billed auction: ρ = target_micro, ε, μ̄ = mu_max."""

    target_micro: float
    epsilon: float
    mu_max: float
