"""Shared fixtures: real Redis server processes and real worker processes (never fakes)."""

import os

pytest_plugins = [
    "tests.fixtures_redis",
    "tests.fixtures_redis_cluster",
    "tests.fixtures_worker",
    "tests.fixtures_postgres",
]

# Tests run the default dtype (WORKER_DTYPE=auto: bf16 on CPUs with native bf16, as users run it):
# decoding and scoring are exact and batch invariant there (workers/engine/invariant.py). Only the
# tests that compare against a plain transformers forward load fp32 themselves. CI can force a dtype
# for the whole run with WORKER_DTYPE (workers started by the tests inherit it).
os.environ.setdefault("WORKER_DTYPE", "auto")
