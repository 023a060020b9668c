"""The hot state on a Redis Cluster: the client, and a write the answer waits on until a replica has it.

Job: `make_cluster_client` (redis-py's asyncio `RedisCluster` for REDIS_URL with REDIS_CLUSTER=true) and
`write_and_wait`: one atomic write - a Lua script, or a MULTI/EXEC of several commands - sent to the
primary serving its slot on ONE connection, followed on that same connection by ``WAIT <replicas>
<timeout ms>``: WAIT counts the replicas that acknowledged this connection's writes, so it must follow the
write on the connection that made it (a ClusterPipeline or a Script call may use another one). Imports
redis, app.settings and app.ledger.keys only. See docs/DESIGN.md § The hot state on a Redis Cluster.

What WAIT promises, and what it does not (Redis 7.0, Debian's server): when it answers n >= 1, n
replicas have received the write in memory, so a failover that promotes one of them keeps it (with one
replica per primary, the one that can be promoted). It is not WAITAOF (Redis >= 7.2): the replica has
not necessarily fsynced it; if WAIT times out the write is NOT rolled back (it stays on the primary and
may or may not survive a failover); and Redis Cluster may still lose an acknowledged write when a
partition isolates a primary with clients for up to cluster-node-timeout (the Redis Cluster spec's
"lost writes window"). So a billing write that reached fewer replicas than asked is answered 503
(`WaitShortError`): the client retries with its Idempotency-Key and is answered the replay if the write
survived, or a fresh auction if it did not; `mosaic ledger reconcile` reports what a failover lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.ledger.keys import BARRIER_KEY, hot_key
from app.settings import Settings

# Error replies that mean the command was not run (the slot moved, the cluster is failing over):
# the topology is read again and the write resent, within the caller's timeout.
_NOT_RUN = (MovedError, AskError, TryAgainError, ClusterDownError)
_NOT_RUN_PREFIXES = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "EXECABORT")


class WaitShortError(RedisError):
    """The write was made on the primary but fewer replicas than asked acknowledged it in time (a
    RedisError: the gateway answers 503 naming it, like any other Redis fault)."""


def make_cluster_client(url: str, **kwargs: Any) -> Any:
    """redis-py's asyncio RedisCluster for a seed node's URL (it discovers the other nodes). Typed Any:
    the ledger code takes it where it takes an ``aioredis.Redis`` (the same command methods)."""
    kwargs.pop("retry_on_error", None)  # the cluster client retries on topology errors itself
    client: aioredis.RedisCluster = RedisCluster.from_url(url, **kwargs)
    return client


def _not_run(reply: Any) -> bool:
    return isinstance(reply, _NOT_RUN) or (
        isinstance(reply, ResponseError) and str(reply).startswith(_NOT_RUN_PREFIXES)
    )


async def _send(client: Any, slot_key: str, packed: Sequence[Sequence[Any]]) -> list[Any]:
    """Send `packed` on one connection of the primary serving `slot_key`; every reply, errors as
    exception objects. A connection error leaves the connection closed and is raised."""
    await client.initialize()  # a no-op once the client has read the topology
    node = client.get_node_from_key(slot_key)
    connection = node.acquire_connection()
    try:
        await connection.send_packed_command(connection.pack_commands([tuple(c) for c in packed]))
        replies: list[Any] = []
        for _ in packed:
            try:
                replies.append(await connection.read_response())
            except ResponseError as error:
                replies.append(error)
        return replies
    except BaseException:
        await connection.disconnect()
        raise
    finally:
        node.release(connection)


async def write_and_wait(
    client: Any,
    slot_key: str,
    commands: Sequence[Sequence[Any]],
    *,
    transaction: bool,
    replicas: int = 0,
    timeout_ms: int = 0,
) -> Any:
    """Run `commands` atomically on the primary of `slot_key`'s slot, then WAIT for `replicas`.

    One command (a script) is atomic by itself; several are wrapped in MULTI/EXEC (`transaction`).
    Returns the script's reply, or EXEC's list. A redirection or CLUSTERDOWN (nothing was run) reads
    the topology again and resends; the caller bounds the whole by its own timeout. Raises the error
    reply of a command that failed, WaitShortError when fewer than `replicas` acknowledged in time
    (the write stands on the primary), and connection errors as they come (the write's fate unknown).
    """
    body = [("MULTI",), *commands, ("EXEC",)] if transaction else list(commands)
    packed = body + ([("WAIT", replicas, timeout_ms)] if replicas > 0 else [])
    while True:
        try:
            replies = await _send(client, slot_key, packed)
        except (RedisConnectionError, RedisTimeoutError, OSError):
            await client.nodes_manager.initialize()  # the primary may be gone: the next write asks anew
            raise
        if any(_not_run(reply) for reply in replies[: len(body)]):
            await asyncio.sleep(0.05)
            await client.nodes_manager.initialize()
            continue
        result = replies[len(body) - 1]
        if isinstance(result, Exception):
            raise result
        if replicas > 0:
            acked = replies[-1]
            if isinstance(acked, Exception) or int(acked) < replicas:
                raise WaitShortError(
                    f"the billing write reached {acked} of {replicas} replicas within {timeout_ms} ms"
                )
        return result


async def wait_replicated(client: Any, settings: Settings) -> None:
    """REDIS_CLUSTER with REDIS_WAIT_REPLICAS: a barrier in the ledger shard's slot (a tiny write, then
    WAIT on its connection). The replication stream is ordered, so when it returns every write the
    primary had made before it has reached the replicas too: a replay of a stored outcome, or the log
    leaves a sequencer has counted, are then on a replica. Raises WaitShortError; on one Redis a no-op."""
    if not (settings.redis_cluster and settings.redis_wait_replicas):
        return
    key = hot_key(settings, BARRIER_KEY)
    await write_and_wait(
        client,
        key,
        [("SET", key, "1", "PX", 60_000)],
        transaction=False,
        replicas=settings.redis_wait_replicas,
        timeout_ms=settings.redis_wait_timeout_ms,
    )
