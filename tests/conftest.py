"""Shared fixtures: real Redis server processes and real worker processes (never fakes)."""

pytest_plugins = ["tests.fixtures_redis", "tests.fixtures_worker"]
