"""The billing ledger: a durable event per auction, applied exactly once to double-entry accounts.

It is independent of the auction: nothing here imports app.auction or the gateway's app;
its modules import app.settings, app.logging_setup (commands), app.gateway.security (routes) and each other.

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
keys), producer.py, scripts.py (apply.lua, dead_letter.lua, trim.lua), consumer.py, trim.py,
reader.py (balances, histories, summary), reconcile.py, commands.py (the processes), routes.py
(HTTP read API), redis_store.py (connecting to Redis or running an embedded server), redis_supervisor.py
(restarting the embedded one), redis_health.py (can Redis take writes now).
"""
