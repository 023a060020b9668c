"""Campaigns: the registry, budgets fitted into an auction, pacing (docs/DESIGN.md § The ad-server layer)."""
