"""The billing ledger: a durable event per auction, applied exactly once to double-entry accounts.

It is independent of the auction and of HTTP: nothing here imports app.auction, app.gateway, FastAPI or
Starlette (its /ledger routes are the gateway's, `app.gateway.ledger_routes`); its modules import
app.settings, app.logging_setup (commands) and each other; the Redis watchers report to a
`RedisObserver` (observers.py). See docs/DESIGN.md § Layout.

The path of one payment::

    gateway ── BillingProducer.append (producer.py): ONE XADD (fsynced: appendfsync always)
               ──► stream BILLING_STREAM
    LedgerConsumer (consumer.py, group BILLING_GROUP): XAUTOCLAIM stuck entries + XREADGROUP a batch
        ─► one EVALSHA of apply.lua per event (the batch pipelined in one MULTI/EXEC): validate
           everything, then mark the auction applied and post both ledger legs in the same script
        ─► [fault-injection pause: BILLING_FAULT_PAUSE_BEFORE_ACK_S] ─► XACK

A crash anywhere is safe: an entry applied but not acknowledged is delivered again (to the same
consumer name from its pending list at start, to any consumer through XAUTOCLAIM after
BILLING_CLAIM_IDLE_MS) and the script answers ``redelivered`` without writing. The stream, the
applied markers and the histories are trimmed only below every group's oldest pending and
last-delivered entry and past BILLING_RETENTION_S (trim.py, trim.lua: the invariant).
Run a consumer: ``mosaic ledger consume`` or ``python -m app.ledger`` (settings from the
environment), or embedded in ``mosaic serve``.

Modules: events.py (money in micro-units, the event, parsing a stream entry), keys.py (the Redis
keys), producer.py, scripts.py (the Lua scripts), consumer.py, trim.py, reader.py (balances,
histories, summary), reconcile.py, commands.py (the processes), render.py (BILLING_MODE=render's
pending charges), idempotency.py (Idempotency-Key outcomes), redis_store.py (connecting to Redis or
running an embedded server), redis_supervisor.py (restarting the embedded one), redis_health.py (can
Redis take writes now), observers.py (what the last two report).
"""
