"""The audit archive in PostgreSQL (issue 36): auction records leave Redis for day-partitioned tables.

schema.py (versioned SQL migrations, day partitions, retention), store.py (the pool, batched idempotent
writes, reads by id and by advertiser), archiver.py (Redis → PostgreSQL → drop from Redis:
at-least-once, nothing lost or duplicated by a kill), reader.py (the records a route reads: Redis, then
the archive), commands.py (`mosaic archive migrate | run | retention`). Layer: below the gateway and
the CLI, above app.ledger (its keys) and app.settings; no FastAPI. See docs/DESIGN.md § Archive.
"""
