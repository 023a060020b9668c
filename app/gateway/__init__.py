"""The HTTP gateway: app factory and lifespan, routes, request/response models, errors, auth, metrics.

It may import every other package of `app/` (it assembles them) and `workers.server` for the
embedded worker; nothing outside the gateway imports its app or routes (the auction and the
evaluation use only its request/response models, `app.gateway.schemas`).
"""
