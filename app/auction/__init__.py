"""One auction: the service (sample → resolve → build result → persist → observe), the candidate
sampler, the client of the LLM workers (dispatch, health), admission control, the what-if and the
sealed views (what an advertiser key may read of an auction).

Imports the mechanism, the prompts, the API's models (`app.contract`), the ledger's producer and
idempotency store, app.settings and `workers.protocol` (the wire models); never `app.gateway`, FastAPI
or Starlette: what it reports goes to the observers of `observers.py`. See docs/DESIGN.md § Layout.
"""
