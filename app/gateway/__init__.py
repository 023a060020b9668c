"""The HTTP gateway: app factory and lifespan, routes (the auction's and /ledger's), errors, auth, metrics.

It may import every other package of `app/` but the CLI (it assembles them; the API's models are
`app.contract`) and `workers.server` for the embedded worker. Nothing in `app/` imports it but the CLI
(`app.cli_auction` drives the app in process); the domain reports through observers that its
Prometheus metrics implement. See docs/DESIGN.md § Layout.
"""
