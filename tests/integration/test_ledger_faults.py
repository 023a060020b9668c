"""Exactly-once billing under process crashes, against real processes:

* the ledger consumer runs as its own process (``python -m app.ledger``) and is SIGKILLed at random
  points and inside its fault-injection pause between the Lua apply and XACK, then restarted, under
  the same name (own pending entries) and under new names (XAUTOCLAIM), several times;
* the Redis server (AOF, appendfsync always) is SIGKILLed and restarted while appends are in flight.
"""

from __future__ import annotations

import asyncio
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from app.ledger.consumer import LedgerConsumer
from app.ledger.events import BillingEvent, make_billing_event
from app.ledger.keys import PLATFORM_ACCOUNT, LedgerKeys
from app.ledger.producer import BillingProducer, BillingUnavailableError
from app.ledger.reader import LedgerReader
from app.ledger.reconcile import reconcile
from app.ledger.redis_store import RedisServer, RedisServerError, open_redis
from app.settings import Settings
from tests.fixtures_redis import RedisServerProcess

REPO = Path(__file__).resolve().parents[2]
KEYS = LedgerKeys.default()
PAUSE_LINE = "fault injection: pausing"

pytestmark = pytest.mark.slow


def make_events(n: int, rng: random.Random, start: int) -> list[BillingEvent]:
    advertisers = [f"adv-{i}" for i in range(15)]
    events = []
    for i in range(start, start + n):
        chosen = rng.sample(advertisers, rng.randint(1, 5))
        payments = {a: round(rng.uniform(0.0, 5.0), rng.choice([1, 3, 6, 8])) for a in chosen}
        events.append(make_billing_event(f"auction-{i}", payments, "USD", now_ms=1_700_000_000_000 + i))
    return events


def expected_balances(events: list[BillingEvent]) -> dict[str, int]:
    balances: dict[str, int] = defaultdict(int)
    for event in events:
        for adv, amount in event.payments_micro.items():
            balances[f"advertiser:{adv}"] -= amount
        balances[PLATFORM_ACCOUNT] += event.revenue_micro
    return {k: v for k, v in balances.items()}


class ConsumerProcess:
    """``python -m app.ledger`` with settings from the environment; its stderr lines are collected."""

    def __init__(self, url: str, name: str, workdir: Path, **settings: Any) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BILLING_", "REDIS_"))}
        env.update(
            PYTHONPATH=str(REPO),
            REDIS_URL=url,
            DATA_DIR=str(workdir / "data"),
            LOG_JSON="false",
            LOG_LEVEL="INFO",
        )
        env.update({key.upper(): str(value) for key, value in settings.items()})
        # cwd outside the repository: a developer's .env must not change the test's settings
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.ledger", "--consumer-name", name],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            self.lines.put(line)

    def wait_for_line(self, text: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if text in self.lines.get(timeout=0.05):
                    return True
            except queue.Empty:
                if self.process.poll() is not None:
                    return False
        return False

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self, timeout_s: float = 10) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)


async def applied_but_unacked(redis: aioredis.Redis, settings: Settings) -> int:
    """Pending entries whose auction the ledger has already applied (the apply-to-XACK window)."""
    rows = await redis.xpending_range(settings.billing_stream, settings.billing_group, "-", "+", 10_000)
    count = 0
    for row in rows:
        entry: Any = await redis.xrange(settings.billing_stream, row["message_id"], row["message_id"])
        if entry and await redis.hexists(KEYS.applied, entry[0][1]["auction_id"]):
            count += 1
    return count


def test_consumer_killed_repeatedly_still_applies_each_event_exactly_once(
    redis_server: RedisServerProcess, tmp_path: Path
) -> None:
    rng = random.Random(20240605)
    settings = Settings(redis_url=redis_server.url)
    consumer_settings: dict[str, Any] = {
        "billing_batch_size": 25,
        "billing_block_ms": 50,
        "billing_claim_idle_ms": 100,
    }
    events = make_events(500, rng, start=0)
    appended: list[BillingEvent] = []
    kills_in_window = 0

    async def append(redis: aioredis.Redis, batch: list[BillingEvent]) -> None:
        producer = BillingProducer(redis, settings)
        for event in batch:
            await producer.append(event)
            appended.append(event)
        # producer retries of earlier events: acknowledged again, must not be applied again
        for event in rng.sample(appended, 3):
            await producer.append(event)
            appended.append(event)

    async def check_window(redis: aioredis.Redis) -> int:
        return await applied_but_unacked(redis, settings)

    async def state(redis: aioredis.Redis) -> dict[str, Any]:
        return await LedgerReader(redis, settings).summary()

    def run(coro_fn: Any, *args: Any) -> Any:
        async def main() -> Any:
            redis = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
            try:
                return await coro_fn(redis, *args)
            finally:
                await redis.aclose()

        return asyncio.run(main())

    run(append, events)
    mid_stream_kills = 0
    rounds = ["pause", "random", "pause", "random", "pause", "random", "pause", "random"]
    for i, kind in enumerate(rounds):
        name = "steady" if i % 2 == 0 else f"fresh-{i}"  # same name: own pending list; new: XAUTOCLAIM
        pause = 0.5 if kind == "pause" else 0.05  # random rounds: slowed down so kills land mid-stream
        consumer = ConsumerProcess(
            redis_server.url, name, tmp_path, billing_fault_pause_before_ack_s=pause, **consumer_settings
        )
        try:
            if kind == "pause":
                assert consumer.wait_for_line(PAUSE_LINE, timeout_s=30), "".join(consumer.log)
                consumer.kill()  # applied, not acknowledged
                assert run(check_window) > 0, "the kill did not land between the apply and XACK"
                kills_in_window += 1
            else:
                if rng.random() < 0.75:  # else: during start-up
                    assert consumer.wait_for_line("started", timeout_s=30), "".join(consumer.log)
                time.sleep(rng.uniform(0.0, 0.4))  # reading, applying, pausing or acking
                consumer.kill()
                summary = run(state)
                mid_stream_kills += summary["pending"] > 0 or summary["lag"] > 0
        finally:
            consumer.kill()
        time.sleep(0.12)  # > billing_claim_idle_ms, so the next consumer may claim the dead one's entries
        run(append, make_events(80, rng, start=500 + 80 * i))

    unique = {event.auction_id: event for event in appended}
    assert len(unique) >= 1000 and kills_in_window == 4 and mid_stream_kills >= 2
    final = ConsumerProcess(redis_server.url, "final", tmp_path, **consumer_settings)
    try:
        deadline = time.monotonic() + 60
        while True:
            summary = run(state)
            if summary["pending"] == 0 and summary["lag"] == 0 and summary["events_applied"] == len(unique):
                break
            assert time.monotonic() < deadline, summary
            time.sleep(0.1)
        assert final.terminate() == 0, "".join(final.log)  # SIGTERM: graceful exit
    finally:
        final.kill()

    async def verify(redis: aioredis.Redis) -> None:
        assert await redis.hlen(KEYS.applied) == len(unique)
        raw_balances: Any = await redis.hgetall(KEYS.balances)
        balances = {k: int(v) for k, v in raw_balances.items()}
        assert balances == expected_balances(list(unique.values()))
        assert sum(balances.values()) == 0
        summary = await LedgerReader(redis, settings).summary()
        assert summary["duplicates"] == len(appended) - len(unique)
        assert summary["dead_letters"] == 0 and summary["stream_length"] == len(appended)
        for adv in ("adv-0", "adv-7"):
            history = await redis.lrange(KEYS.history(adv), 0, -1)
            assert len(history) == sum(adv in e.payments_micro for e in unique.values())
        report = await reconcile(redis, settings)
        assert report.ok, report.differences
        assert report.events_applied == len(unique) and report.in_flight == 0

    run(verify)


def test_redis_killed_and_restarted_loses_no_acknowledged_event(redis_server: RedisServerProcess) -> None:
    rng = random.Random(7)
    settings = Settings(
        redis_url=redis_server.url,
        billing_block_ms=50,
        billing_claim_idle_ms=100,
        billing_batch_size=50,
        billing_append_timeout_s=1.0,
    )
    events = make_events(800, rng, start=0)

    async def main() -> None:
        handle = await open_redis(settings)
        redis = handle.client
        acked: dict[str, dict[str, str]] = {}
        failures = 0
        todo: asyncio.Queue[BillingEvent] = asyncio.Queue()
        for event in events:
            todo.put_nowait(event)
        producer = BillingProducer(redis, settings)

        async def produce() -> None:
            nonlocal failures
            while not todo.empty():
                event = todo.get_nowait()
                while True:
                    try:
                        acked[await producer.append(event)] = event.stream_fields()
                        break
                    except BillingUnavailableError:
                        failures += 1  # the gateway would answer 503; here: retry the same event
                        await asyncio.sleep(0.02)

        async def kill_twice() -> None:
            for threshold in (200, 500):
                while len(acked) < threshold:
                    await asyncio.sleep(0)
                redis_server.kill()  # appends are in flight right now
                await asyncio.sleep(0.1)
                await asyncio.to_thread(redis_server.restart)

        consumer = LedgerConsumer(redis, settings, "c1")
        await consumer.ensure_group()
        stop = asyncio.Event()
        consuming = asyncio.create_task(consumer.run(stop))
        await asyncio.gather(kill_twice(), *(produce() for _ in range(16)))
        assert failures > 0  # the kills did interrupt appends

        # every acknowledged (XADD-returned) entry survived both crashes, byte for byte
        for stream_id, fields in acked.items():
            stored: Any = await redis.xrange(settings.billing_stream, stream_id, stream_id)
            assert stored and stored[0][1] == fields, stream_id
        deadline = time.monotonic() + 30
        while True:
            try:
                summary = await LedgerReader(redis, settings).summary()
            except RedisError:
                summary = {}
            if summary.get("pending") == 0 and summary.get("lag") == 0:
                break
            assert time.monotonic() < deadline, summary
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(consuming, timeout=5)
        # (Redis 6.2 replays SCRIPT LOAD from its AOF; Redis 7 forgets scripts on restart -> NOSCRIPT,
        # which test_ledger.py covers with SCRIPT FLUSH)
        assert await redis.hlen(KEYS.applied) == len(events)
        raw_balances: Any = await redis.hgetall(KEYS.balances)
        balances = {k: int(v) for k, v in raw_balances.items()}
        assert balances == expected_balances(events) and sum(balances.values()) == 0
        report = await reconcile(redis, settings)
        assert report.ok, report.differences
        await handle.close()

    asyncio.run(main())


def test_a_restart_never_mistakes_another_server_on_its_port_for_itself(tmp_path: Path) -> None:
    """A killed server's port is free until its restart binds it again, and another process may take it
    meanwhile (other tests' Redis servers on this machine, or anything else). The restart then fails to
    bind; it must say so, not answer "ready" because *a* Redis answers PING there: the ledger would write
    to a stranger's server (the full suite once saw wrong balances in the kill/restart test that way)."""
    holder = RedisServer(tmp_path / "holder")
    holder.start()
    try:
        restart = RedisServer(tmp_path / "restart", port=holder.port)
        with pytest.raises(RedisServerError, match="exited"):
            restart.start(timeout_s=5)
    finally:
        holder.kill()
