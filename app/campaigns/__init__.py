"""Campaigns: the registry in Redis (`store`) and the pure rules of when a campaign may bid
(`eligibility`). Sits between `app.auction` and `app.ledger`: imports app.ledger, app.contract,
app.mechanism and app.settings, never app.auction or app.gateway; see docs/DESIGN.md § Layout.
"""
