"""The hot state on a real Redis Cluster (issue 36): 3 primaries + 3 replicas of Debian's redis-server,
a real gateway process (`mosaic serve`, tiny-random worker) with REDIS_CLUSTER=true.

* the full path: auction (inline and campaign advertisers, keyed and not, a replay) → the bill (record
  + event + log leaf + idempotency outcome in one script or MULTI on the ledger shard's slot) → the
  embedded consumer's apply (the budget posts in their campaigns' slots) → reconcile clean, the
  campaign's spend = its billed payments, every hot key in the one slot of its hash tag;
* a primary SIGKILLed under load: its replica takes over; every auction answered 200 is billed
  exactly once (WAIT 1: the answer waits for the replica), nothing the client was told was billed is
  lost; keyed retries of 503s are answered the replay or a fresh auction, never a second bill.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from app.ledger.keys import CLUSTER_SHARD_TAG, LedgerKeys
from app.ledger.reconcile import reconcile
from app.ledger.redis_store import open_redis
from app.settings import Settings
from tests.fixtures_gateway import GatewayProcess, start_gateway_process
from tests.fixtures_redis_cluster import RedisCluster
from tests.fixtures_worker import WorkerProcess
from tests.integration.test_gateway import auction_body

pytestmark = pytest.mark.timeout(240)

CAMPAIGN = {"id": "cluster-strings", "owner": "tunelab", "name": "TuneLab",
            "description": "selling guitar tuners and capos", "value_scale": 1.0,
            "budget": {"total_micro": 10**12}}  # fmt: skip
GATEWAY_ENV = {
    "REDIS_CLUSTER": "true",
    "BILLING_BLOCK_MS": "100",
    "BILLING_CLAIM_IDLE_MS": "1000",
    "AUCTION_DEADLINE_S": "8",
    "BILLING_APPEND_TIMEOUT_S": "3",
    "REDIS_PROBE_INTERVAL_S": "0.2",
    "TRANSPARENCY_HEAD_INTERVAL_S": "0.2",
}


def cluster_settings(cluster: RedisCluster, tmp_path: Path) -> Settings:
    return Settings(redis_url=cluster.url, redis_cluster=True, data_dir=tmp_path, log_json=False)


def small_body(seed: int, **extra: Any) -> dict[str, Any]:
    return auction_body(candidates=2, max_tokens=4, seed=seed, include_candidates=False, **extra)


@pytest.fixture
def gateway(
    redis_cluster: RedisCluster, tiny_worker: WorkerProcess, tmp_path: Path
) -> Iterator[GatewayProcess]:
    redis_cluster.flushall()
    process = start_gateway_process(tiny_worker.url, redis_cluster.url, tmp_path / "gw", **GATEWAY_ENV)
    try:
        yield process
    finally:
        process.stop()


async def settle(settings: Settings, served: int, timeout_s: float = 60.0) -> Any:
    """Reconcile until the consumer has applied `served` events (or the time is up); the last report."""
    handle = await open_redis(settings)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            report = await reconcile(handle.client, settings)
            if (report.events_applied >= served and report.in_flight == 0) or time.monotonic() > deadline:
                return report
            await asyncio.sleep(0.3)
    finally:
        await handle.close()


async def hash_of(settings: Settings, key: str) -> dict[str, str]:
    handle = await open_redis(settings)
    try:
        raw = await handle.client.hgetall(key)
        return {str(k): str(v) for k, v in raw.items()}
    finally:
        await handle.close()


def all_keys(cluster: RedisCluster) -> list[str]:
    keys: list[str] = []
    for node in cluster.nodes:
        if node.running():
            with cluster.client(node) as conn:
                if conn.execute_command("ROLE")[0] == "master":
                    keys += [str(k) for k in conn.scan_iter(count=1000)]
    return keys


def test_auction_bill_apply_reconcile_on_a_cluster(
    gateway: GatewayProcess, redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    """Invariant: on a Redis Cluster the bill (record, event, log leaf, outcome) is one atomic write in
    the ledger shard's slot, applied once by the consumer (a campaign's budget post in its own slot),
    and reconcile is clean: applied events = auctions served, the campaign spent = its payments, a
    replay bills nothing. Every hot key carries the shard's tag; budgets keep their campaign's."""
    response = httpx.post(f"{gateway.url}/campaigns", json=CAMPAIGN, timeout=30)
    assert response.status_code == 201, response.text
    served: dict[str, dict[str, Any]] = {}
    for seed in range(8):
        extra: dict[str, Any] = {"campaigns": [CAMPAIGN["id"]]} if seed % 2 else {}
        headers = {"Idempotency-Key": f"cluster-e2e-{seed}"} if seed % 3 else {}
        answer = httpx.post(
            f"{gateway.url}/auction", json=small_body(seed, **extra), headers=headers, timeout=60
        )
        assert answer.status_code == 200, answer.text
        served[answer.json()["auction_id"]] = answer.json()
    replay = httpx.post(
        f"{gateway.url}/auction", json=small_body(1, campaigns=[CAMPAIGN["id"]]),
        headers={"Idempotency-Key": "cluster-e2e-1"}, timeout=60,
    )  # fmt: skip
    assert replay.status_code == 200 and replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.json()["auction_id"] in served

    settings = cluster_settings(redis_cluster, tmp_path)
    report = asyncio.run(settle(settings, len(served)))
    assert report.ok, report.differences
    assert report.events_applied == len(served) and report.audit_records == len(served)
    assert set(asyncio.run(hash_of(settings, LedgerKeys.of(settings).applied))) == set(served)
    for auction_id in list(served)[:2]:  # the record reads back through the gateway
        assert httpx.get(f"{gateway.url}/auctions/{auction_id}", timeout=30).status_code == 200

    balances = asyncio.run(hash_of(settings, LedgerKeys.of(settings).balances))
    stats = httpx.get(f"{gateway.url}/campaigns/{CAMPAIGN['id']}/stats", timeout=30).json()
    assert report.campaigns == 1  # reconcile checked its spend against the applied events
    assert stats["spent_total_micro"] == -int(balances[f"advertiser:{CAMPAIGN['owner']}"]) > 0, stats

    keys = all_keys(redis_cluster)
    hot = ("mosaic:auction", "mosaic:ledger", "mosaic:billing", "mosaic:idem", "mosaic:tlog", "mosaic:render")
    untagged = [k for k in keys if k.startswith(hot)]  # the campaign registry's lists may be anywhere
    assert not untagged, untagged
    assert any(k.startswith(CLUSTER_SHARD_TAG + "mosaic:auction:") for k in keys)
    slots = {redis_cluster.client(redis_cluster.nodes[0]).execute_command("CLUSTER", "KEYSLOT", k)
             for k in keys if k.startswith(CLUSTER_SHARD_TAG)}  # fmt: skip
    assert len(slots) == 1


class Load:
    """Clients that each send keyed auctions, one key at a time, retrying a key until its outcome is
    final: 200 (served), or a stored failure (a replayed 5xx: that key billed nothing)."""

    def __init__(self, url: str, clients: int) -> None:
        self.url, self.clients = url, clients
        self.served: dict[str, str] = {}  # key -> auction id answered 200
        self.failed: set[str] = set()  # keys whose stored outcome is a failure
        self.statuses: dict[int, int] = {}
        self.first_200_at: list[float] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def attempt(self, http: httpx.Client, key: str, seed: int) -> httpx.Response | None:
        try:
            return http.post(f"{self.url}/auction", json=small_body(seed), headers={"Idempotency-Key": key})
        except httpx.HTTPError:
            return None

    def run_key(self, http: httpx.Client, key: str, seed: int) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            response = self.attempt(http, key, seed)
            status = response.status_code if response is not None else 0
            with self.lock:
                self.statuses[status] = self.statuses.get(status, 0) + 1
            if response is not None and status == 200:
                with self.lock:
                    self.served[key] = response.json()["auction_id"]
                    self.first_200_at.append(time.monotonic())
                return
            if (
                response is not None
                and status >= 500
                and response.headers.get("Idempotent-Replayed") == "true"
            ):
                with self.lock:
                    self.failed.add(key)
                return
            time.sleep(0.2)  # 503 before or during the write, 409 while its lease runs: the same key again
        raise AssertionError(f"key {key} has no final outcome after 60 s: {self.statuses}")

    def client(self, index: int) -> None:
        with httpx.Client(timeout=30) as http:
            for n in range(10_000):
                if self.stop.is_set():
                    return
                self.run_key(http, f"failover-{index}-{n}", 1000 * index + n)


def test_a_killed_primary_loses_nothing_the_client_was_told_was_billed(
    gateway_wait: GatewayProcess, redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    """Invariant: with WAIT 1 after the bill, every auction answered 200 is billed exactly once even
    when the ledger shard's primary is SIGKILLed under load and its replica takes over: the applied
    auctions are exactly the keys served 200 (none lost, none billed twice, a 503'd key's stored
    failure billed nothing); reconcile is clean after the failover."""
    failover(gateway_wait, redis_cluster, tmp_path, stall_replica_s=0.0)


def test_a_bill_the_replica_has_not_received_is_never_answered_200(
    gateway_wait: GatewayProcess, redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    """Invariant: an answer 200 means a replica has the bill (WAIT 1). The replica is SIGSTOPped for
    1.5 s under load (the bills of that time reach the primary only: answered 503, not 200), then the
    primary is SIGKILLed and the replica, resumed, takes over without them: no auction answered 200 is
    lost, and no lost write is billed (their keys' retries run afresh). With REDIS_WAIT_REPLICAS=0 the
    bills of the stall are answered 200 and lost: this test fails."""
    failover(gateway_wait, redis_cluster, tmp_path, stall_replica_s=1.5)


def failover(
    gateway: GatewayProcess, redis_cluster: RedisCluster, tmp_path: Path, stall_replica_s: float
) -> None:
    """Load, (a stalled replica,) the ledger shard's primary SIGKILLed, its replica promoted, the killed
    node restarted as a replica; then every key's final outcome against the ledger."""
    primary = redis_cluster.primary_for(CLUSTER_SHARD_TAG + "probe")
    replica = redis_cluster.replica_of(primary)
    load = Load(gateway.url, clients=4)
    threads = [threading.Thread(target=load.client, args=(i,), daemon=True) for i in range(load.clients)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(load.served) >= 12, 60, "12 auctions served before the kill")
    if stall_replica_s and replica.pid is not None:
        # The stopped replica's kernel would still buffer the replication stream: cut the link too, so
        # the bills of the stall reach the primary only (the stopped replica cannot reconnect).
        os.kill(replica.pid, signal.SIGSTOP)
        with redis_cluster.client(primary) as conn:
            conn.client_kill_filter(_type="replica")
        time.sleep(stall_replica_s)
    before = len(load.served)
    killed_at = time.monotonic()
    redis_cluster.kill(primary)
    if stall_replica_s and replica.pid is not None:
        os.kill(replica.pid, signal.SIGCONT)
    wait_until(lambda: promoted(redis_cluster, replica), 30, "the replica promoted")
    promoted_s = time.monotonic() - killed_at
    # The new primary has no replica: WAIT 1 refuses every bill (503) until one joins. The killed node
    # restarts (as k8s restarts its pod) and rejoins as the new primary's replica.
    primary.start()
    wait_until(lambda: len(load.served) >= before + 16, 90, "16 auctions served after the kill")
    load.stop.set()
    for thread in threads:
        thread.join(timeout=90)
    after_kill = sorted(t for t in load.first_200_at if t > killed_at)
    failover_s = after_kill[0] - killed_at
    print(
        f"failover: replica promoted after {promoted_s:.2f}s, first 200 after {failover_s:.2f}s; "
        f"statuses {load.statuses}; served {len(load.served)}"
    )

    final = {key: replay(gateway.url, key) for key in sorted(load.failed)}  # final state of 503s
    served = {**load.served, **{k: v for k, v in final.items() if v}}
    settings = cluster_settings(redis_cluster, tmp_path)
    report = asyncio.run(settle(settings, len(set(served.values()))))
    assert report.ok, report.differences
    applied = set(asyncio.run(hash_of(settings, LedgerKeys.of(settings).applied)))
    assert set(served.values()) <= applied, "an auction answered 200 was lost by the failover"
    assert applied == set(served.values()), "an auction was billed that no key was finally served"
    assert len(set(served.values())) == len(served), "two keys share an auction id"
    # the transparency log: no head ever covered a leaf the failover lost (no fork, nothing "rewritten")
    last = load.served[max(load.served, key=lambda k: tuple(int(x) for x in k.split("-")[1:]))]
    assert proof_status(gateway.url, last) == 200
    tampered = [line for line in httpx.get(f"{gateway.url}/metrics").text.splitlines()
                if line.startswith("mosaic_tlog_tampered_total{") and not line.endswith(" 0.0")]  # fmt: skip
    assert not tampered, tampered
    redis_cluster.wait_ok()


def proof_status(url: str, auction_id: str) -> int:
    """The inclusion proof's status, once a head covers the auction (409 while none does)."""
    for _ in range(50):
        status = httpx.get(f"{url}/auctions/{auction_id}/proof", timeout=30).status_code
        if status != 409:
            return status
        time.sleep(0.2)
    return 409


def promoted(cluster: RedisCluster, replica: Any) -> bool:
    try:
        return cluster.primary_for(CLUSTER_SHARD_TAG + "probe").port == replica.port
    except (redis.RedisError, OSError, StopIteration):
        return False


def replay(url: str, key: str) -> str:
    """The auction id a key's stored outcome names ('' for a stored failure)."""
    index, n = (int(x) for x in key.removeprefix("failover-").split("-"))
    response = httpx.post(
        f"{url}/auction", json=small_body(1000 * index + n), headers={"Idempotency-Key": key}, timeout=30
    )
    return str(response.json()["auction_id"]) if response.status_code == 200 else ""


def wait_until(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def gateway_wait(
    redis_cluster: RedisCluster, tiny_worker: WorkerProcess, tmp_path: Path
) -> Iterator[GatewayProcess]:
    """A gateway whose bills WAIT for one replica (REDIS_WAIT_REPLICAS=1, the default)."""
    redis_cluster.flushall()
    env = {**GATEWAY_ENV, "REDIS_WAIT_REPLICAS": "1", "REDIS_WAIT_TIMEOUT_MS": "500",
           "AUCTION_DEADLINE_S": "5", "BILLING_APPEND_TIMEOUT_S": "2"}  # fmt: skip
    process = start_gateway_process(tiny_worker.url, redis_cluster.url, tmp_path / "gw", **env)
    try:
        yield process
    finally:
        process.stop()


def test_render_mode_on_a_cluster(
    redis_cluster: RedisCluster, tiny_worker: WorkerProcess, tmp_path: Path
) -> None:
    """Invariant: BILLING_MODE=render on a cluster: the pending charge is written with the record (a
    keyed one under WATCH of its key, all in the shard's slot), billed once by the render (render.lua:
    charge, stream, due set, counts in one slot), a second render bills nothing, an unrendered charge
    expires unbilled; reconcile is clean."""
    redis_cluster.flushall()
    env = {**GATEWAY_ENV, "BILLING_MODE": "render", "RENDER_WINDOW_S": "2"}
    gateway = start_gateway_process(tiny_worker.url, redis_cluster.url, tmp_path / "gw", **env)
    try:
        url = f"{gateway.url}/auction"
        first = httpx.post(
            url, json=small_body(301), headers={"Idempotency-Key": "render-1"}, timeout=60
        ).json()
        unrendered = httpx.post(url, json=small_body(302), timeout=60).json()
        assert first["billing"] == unrendered["billing"] == "pending"
        rendered = httpx.post(f"{gateway.url}/auctions/{first['auction_id']}/render", timeout=30)
        assert rendered.status_code == 200 and rendered.json()["billed_now"] is True, rendered.text
        again = httpx.post(f"{gateway.url}/auctions/{first['auction_id']}/render", timeout=30).json()
        assert again["billed_now"] is False and again["stream_id"] == rendered.json()["stream_id"]
        time.sleep(2 + 1.5)  # the window passes; the embedded consumer sweeps about once a second
        late = httpx.post(f"{gateway.url}/auctions/{unrendered['auction_id']}/render", timeout=30)
        assert late.status_code == 410, late.text
        report = asyncio.run(settle(cluster_settings(redis_cluster, tmp_path), 1))
        assert report.ok and report.events_applied == 1, report
        assert report.render.get("billed") == 1 and report.render.get("expired") == 1, report.render
    finally:
        gateway.stop()
