"""Campaigns: registry, budgets' fit, pacing and knowing what to bid; see docs/DESIGN.md § Layout."""
