"""The API's models, shared by the gateway, the auction, the evaluation and `mosaic_client`.

A leaf: pydantic only, plus the pure `app.prompts`, `app.mechanism` and `app.settings` (never FastAPI,
Starlette, the gateway, the auction or the ledger). Modules: request.py (AuctionRequest, AdvertiserIn),
limits.py (the limits that are settings), result.py (AuctionResponse, AuctionRecord), whatif.py,
sealed.py (an advertiser's sealed view and `resolve_own`, her figures from it by `app.mechanism`),
errors.py (the error bodies). Seams and invariants: docs/DESIGN.md § Layout.
"""
