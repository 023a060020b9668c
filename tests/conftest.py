"""Shared fixtures: real Redis server processes and real worker processes (never fakes)."""

import os

pytest_plugins = ["tests.fixtures_redis", "tests.fixtures_worker"]

# Exact log-prob tests need fp32 on every machine: WORKER_DTYPE=auto picks bf16 on CPUs with native
# bf16 (this one, maybe not CI's). Workers started by the tests (in process or as subprocesses) inherit
# this; bf16 has its own tests, and the e2e test drops it to run the README's real default.
os.environ.setdefault("WORKER_DTYPE", "float32")
