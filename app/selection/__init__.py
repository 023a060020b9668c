"""Which campaigns enter an auction (issue 34): embedder, taxonomy, index, matching, catalog, selector.

Sits between app.auction and app.campaigns: imports app.campaigns, app.ledger, app.contract,
app.settings, numpy, faiss and (embedder only, lazily) torch/transformers; never app.auction or
app.gateway. Importing the package loads nothing heavy; see docs/DESIGN.md § Selection.
"""
