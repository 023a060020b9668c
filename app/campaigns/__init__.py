"""Campaigns: the registry in Redis (`store`), when a campaign may bid (`eligibility`), who enters an
auction (`participants`), budgets fitted and spent in two phases (`budget_fit`, `spend`), pacing
(`pacing`), what to bid (`calibration`) and a campaign's report (`stats`). Sits between `app.auction`
and `app.ledger`: imports app.ledger, app.contract, app.mechanism and app.settings, never app.auction or
app.gateway; see docs/DESIGN.md § Layout and § Campaigns, budgets and pacing.
"""
