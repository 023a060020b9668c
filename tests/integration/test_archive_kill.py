"""A SIGKILLed archiver loses and duplicates nothing (real processes: Redis, PostgreSQL, the archiver).

Invariant: Redis holds N queued audit records and N/2 billing stream entries; `python -m app.archive
run` is started and SIGKILLed again and again at random moments (mid-batch: before its commit, or
between its commit and Redis' drop), then left to finish. Afterwards PostgreSQL holds exactly N rows,
one per auction, each the exact text Redis held, and one row per stream entry; Redis holds none of
the records, the queue is empty and the ``archive`` group has nothing pending. At some kills
PostgreSQL and Redis both held a record (the window between commit and drop was hit) - checked, so
the test shows the window it claims to cover.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import redis

from app.ledger.keys import ARCHIVE_QUEUE_KEY
from tests.fixtures_gateway import REPO
from tests.fixtures_redis import RedisServerProcess

N = 100_000


def archive_process(action: str, redis_url: str, dsn: str, data_dir: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "REDIS_URL": redis_url,
        "ARCHIVE_DSN": dsn,
        "ARCHIVE_BATCH": "100",
        "ARCHIVE_INTERVAL_S": "0.05",
        "ARCHIVE_LEASE_S": "1",  # a killed archiver's lease lapses in 1 s
        "DATA_DIR": str(data_dir),
        "LOG_JSON": "false",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "app.archive", action],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def fill(client: redis.Redis, n: int) -> dict[str, str]:
    """N records as the producer writes them with ARCHIVE_DSN (the record and its queue entry)."""
    now_ms = int(time.time() * 1000)
    records = {}
    for start in range(0, n, 1000):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(n, start + 1000)):
            auction_id = f"k{i:06d}"
            created = now_ms - (i % 3) * 86_400_000  # three days: three partitions
            text = json.dumps(
                {"auction_id": auction_id, "created_at_ms": created, "advertisers": [{"id": "a"}]}
            )
            records[auction_id] = text
            pipe.set(f"mosaic:auction:{auction_id}", text, ex=3600)
            pipe.zadd(ARCHIVE_QUEUE_KEY, {f"mosaic:auction:{auction_id}": now_ms})
            if i % 2 == 0:  # a billing event for every other auction: the ledger's history
                pipe.xadd("mosaic:billing", {"auction_id": auction_id, "payments": '{"a":1}'})
        pipe.execute()
    return records


def kill_between_commit_and_drop(
    process: subprocess.Popen[bytes], overlap: Callable[[], int], rng: random.Random
) -> bool:
    """Freeze the archiver (SIGSTOP) at random moments until it is caught after a commit whose rows
    Redis still holds (after its first batch dropped any overlap an earlier kill left), then SIGKILL
    it there. True when caught (else it is killed at the last freeze)."""
    seen_clean, deadline = False, time.monotonic() + 10
    while process.poll() is None and time.monotonic() < deadline:
        os.kill(process.pid, signal.SIGSTOP)
        now = overlap()
        if now > 0 and seen_clean:
            process.send_signal(signal.SIGKILL)
            return True
        seen_clean |= now == 0
        os.kill(process.pid, signal.SIGCONT)
        time.sleep(rng.uniform(0, 0.004))
    return False


def test_sigkilled_archiver_loses_and_duplicates_nothing(
    redis_server: RedisServerProcess, archive_dsn: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    records = fill(client, N)
    migrate = archive_process("migrate", redis_server.url, archive_dsn, tmp_path)
    assert migrate.wait(timeout=60) == 0, migrate.stderr.read() if migrate.stderr else ""
    rng = random.Random(36)
    kills, window_kills = 0, 0
    with psycopg.connect(archive_dsn, autocommit=True) as conn:

        def overlap() -> int:
            """Records both in PostgreSQL and still queued in Redis (committed, not yet dropped)."""
            row = conn.execute("SELECT count(*) FROM auction_records").fetchone()
            return (int(row[0]) if row else 0) + client.zcard(ARCHIVE_QUEUE_KEY) - N

        while client.zcard(ARCHIVE_QUEUE_KEY) and kills < 40 and not (kills >= 8 and window_kills >= 3):
            process = archive_process("run", redis_server.url, archive_dsn, tmp_path)
            time.sleep(rng.uniform(1.2, 1.6))  # it starts in ~0.6 s, the killed one's lease lapses in 1 s
            if kills % 2:
                window_kills += kill_between_commit_and_drop(process, overlap, rng)
            process.send_signal(signal.SIGKILL)  # at a random moment (mostly mid-transaction)
            process.wait(timeout=30)
            kills += 1
        final = archive_process("run", redis_server.url, archive_dsn, tmp_path)
        started, deadline = time.monotonic(), time.monotonic() + 120

        def busy() -> bool:
            row = conn.execute("SELECT count(*) FROM billing_events").fetchone()
            return bool(client.zcard(ARCHIVE_QUEUE_KEY)) or (row is not None and row[0] < N // 2)

        while (busy() or time.monotonic() < started + 3) and time.monotonic() < deadline:
            time.sleep(0.1)
        final.send_signal(signal.SIGTERM)  # its signal handlers are installed by now: a clean stop
        assert final.wait(timeout=30) == 0
        rows = conn.execute("SELECT auction_id, record FROM auction_records").fetchall()
        events = conn.execute("SELECT auction_id, stream_id FROM billing_events").fetchall()
    print(f"kills={kills} of which between a commit and its drop: {window_kills}")
    assert len(rows) == N and dict(rows) == records  # nothing lost, nothing twice, byte for byte
    assert kills >= 8, "the archiver finished before it was killed a few times: raise N"
    assert window_kills >= 3, "no kill landed between a commit and its drop: the test missed that window"
    assert client.zcard(ARCHIVE_QUEUE_KEY) == 0
    stream_ids = [entry_id for entry_id, _ in client.xrange("mosaic:billing")]
    assert len(events) == N // 2 and sorted(i for _, i in events) == sorted(stream_ids)  # each entry once
    assert sorted(a for a, _ in events) == sorted(a for a in records if int(a[1:]) % 2 == 0)
    assert client.xpending("mosaic:billing", "archive")["pending"] == 0
    assert not list(client.scan_iter(match="mosaic:auction:*", count=1000))
