"""`mosaic compare`: MOSAIC beside other mechanisms (no ads, best-of-M + VCG, first-price best-of-M, a
segment auction) on the same cached candidates, with revenue, welfare, user utility and incentive gaps.

Modules: mechanisms.py (pure: one function per mechanism), incentives.py (the misreport search),
rows.py (candidates → measured rows), report.py (markdown + figures), run.py (the command).
See docs/DESIGN.md § Layout.
"""
