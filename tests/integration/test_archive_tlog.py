"""The transparency log's leaves archived to PostgreSQL and trimmed from Redis (issue 36).

Invariants (real Redis, real PostgreSQL):
- every write path (the MULTI's log_append.lua and the keyed bill script) numbers a new leaf after the
  leaves already archived and trimmed (index = base + list position), so indexes never repeat or shift;
- the archiver trims a leaf (and drops an index entry) only after PostgreSQL committed it; afterwards
  Redis holds no archived leaf and no archived index entry, PostgreSQL holds every one, once;
- the sequencer, a fresh one (a restart) included, gets the same roots, and the proofs of archived
  leaves (inclusion against the latest head, consistency from a head signed before archiving) verify
  by the RFC's algorithms; an archived leaf gone from PostgreSQL halts the log (`deleted`), never a
  shorter or shifted tree;
- a SIGKILLed archiver (real processes, killed again and again, some kills between a commit and its
  trim) loses and duplicates no leaf and no index entry.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import psycopg
import pytest
import redis
import redis.asyncio as aioredis

from app.archive.store import ArchiveStore
from app.archive.tlog import ArchivedLog, LeafArchiver
from app.ledger.idempotency import IdempotencyStore, fingerprint
from app.ledger.keys import TLOG_BASE_KEY
from app.ledger.producer import BillingProducer
from app.ledger.tlog import LOG_KEYS, leaf_hash_hex
from app.transparency.proofs import consistency_ok, inclusion_ok, leaf_hash
from app.transparency.sequencer import LogTamperedError, TransparencyLog
from tests.fixtures_redis import RedisServerProcess
from tests.integration.test_archive import migrated
from tests.integration.test_archive_kill import archive_process, kill_between_commit_and_drop
from tests.integration.test_transparency_log import Counted, settings_for, statement, write
from tests.unit.test_transparency_checks import SIGNER
from tests.unit.test_transparency_proofs import mth

pytestmark = pytest.mark.timeout(300)


def test_archived_leaves_keep_indexes_roots_and_proofs(
    redis_server: RedisServerProcess, archive_dsn: str, tmp_path: Path
) -> None:
    settings = settings_for(redis_server, tmp_path, archive_dsn=archive_dsn, archive_batch=64)

    async def scenario() -> None:
        await migrated(archive_dsn)
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        store = ArchiveStore(archive_dsn)
        await store.open()
        producer, keys = BillingProducer(client, settings), IdempotencyStore(client, settings)
        ids = [f"t{i}" for i in range(250)]
        for auction_id in ids[:150]:  # unkeyed bills: the MULTI's log_append.lua
            await write(producer, auction_id, log_entry=statement(auction_id))
        log = TransparencyLog(client, settings, signer=SIGNER, archived=ArchivedLog(store))
        early = await log.tick()
        assert early is not None and early.tree_size == 150
        archiver = LeafArchiver(client, store, settings.archive_batch)
        while await archiver.archive_once():
            pass
        await archiver.archive_once()  # the index entries of the last batch
        assert int(await client.get(TLOG_BASE_KEY)) == 150 and await client.llen(LOG_KEYS.leaves) == 0
        assert await client.hlen(LOG_KEYS.index) == 0
        for auction_id in ids[150:]:  # keyed bills: idempotency_bill.lua, numbered after the base
            claim = await keys.claim("k", auction_id, fingerprint({"a": auction_id}), deadline_s=5)
            await write(
                producer,
                auction_id,
                idempotency=keys.write_for(claim, 200, "{}", auction_id),
                log_entry=statement(auction_id),
            )
        assert int(await client.hget(LOG_KEYS.index, ids[150])) == 150
        await archiver.archive_once()  # 64 of the new ones
        hashes = [leaf_hash(statement(a)) for a in ids]
        for fresh in (log, TransparencyLog(client, settings, signer=SIGNER, archived=ArchivedLog(store))):
            head = await fresh.tick()
            assert head is not None and head.tree_size == 250
            assert head.root_hash == mth([statement(a) for a in ids])  # RFC 9162 §2.1, recursively
            for auction_id in (ids[3], ids[149], ids[160], ids[249]):  # archived and not
                index = await fresh.store.leaf_index(auction_id)
                assert index == ids.index(auction_id)
                path = fresh.inclusion_path(index, 250)
                assert inclusion_ok(index, 250, hashes[index], path, head.root_hash)
            path = fresh.consistency_path(early.tree_size, 250)
            assert consistency_ok(150, 250, early.root_hash, head.root_hash, path)
        async with store.pool.connection() as conn:
            await conn.execute("DELETE FROM tlog_leaves WHERE leaf_index = 7")
        restarted = TransparencyLog(client, settings, signer=SIGNER, observer=(seen := Counted()))
        restarted.store.archived = ArchivedLog(store)
        with pytest.raises(LogTamperedError, match="leaf 7"):
            await restarted.tick()
        assert seen.tampered == ["deleted"]
        await client.aclose()
        await store.close()

    asyncio.run(scenario())


def fill_leaves(client: redis.Redis, n: int) -> list[str]:
    """N leaves and index entries as the producer writes them (by log_append.lua's rule, base 0)."""
    hashes = [leaf_hash_hex(statement(f"L{i:06d}")) for i in range(n)]
    for start in range(0, n, 1000):
        pipe = client.pipeline(transaction=False)
        pipe.rpush(LOG_KEYS.leaves, *hashes[start : start + 1000])
        pipe.hset(LOG_KEYS.index, mapping={f"L{i:06d}": i for i in range(start, min(n, start + 1000))})
        pipe.execute()
    return hashes


def test_sigkilled_archiver_loses_and_duplicates_no_leaf(
    redis_server: RedisServerProcess, archive_dsn: str, tmp_path: Path
) -> None:
    """Killed at random and between a commit and its trim: PostgreSQL ends with every leaf once, at its
    index, and every index entry; Redis with none of them and ``base`` = N."""
    n = 100_000
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    hashes = fill_leaves(client, n)
    migrate = archive_process("migrate", redis_server.url, archive_dsn, tmp_path)
    assert migrate.wait(timeout=60) == 0
    rng = random.Random(3636)
    kills = window_kills = 0
    with psycopg.connect(archive_dsn, autocommit=True) as conn:

        def overlap() -> int:
            """Leaves committed in PostgreSQL and still in Redis (not yet trimmed)."""
            row = conn.execute("SELECT count(*) FROM tlog_leaves").fetchone()
            return (int(row[0]) if row else 0) - int(client.get(TLOG_BASE_KEY) or 0)

        while client.llen(LOG_KEYS.leaves) and kills < 30 and not (kills >= 6 and window_kills >= 2):
            process = archive_process("run", redis_server.url, archive_dsn, tmp_path)
            time.sleep(rng.uniform(1.2, 1.6))
            if kills % 2:
                window_kills += kill_between_commit_and_drop(process, overlap, rng)
            process.kill()
            process.wait(timeout=30)
            kills += 1
        final = archive_process("run", redis_server.url, archive_dsn, tmp_path)
        deadline = time.monotonic() + 120
        while (client.llen(LOG_KEYS.leaves) or client.hlen(LOG_KEYS.index)) and time.monotonic() < deadline:
            time.sleep(0.1)
        final.terminate()
        assert final.wait(timeout=30) == 0
        leaves = conn.execute("SELECT leaf_index, leaf_hash FROM tlog_leaves ORDER BY leaf_index").fetchall()
        index = dict(conn.execute("SELECT auction_id, leaf_index FROM tlog_index").fetchall())
    print(f"kills={kills} of which between a commit and its trim: {window_kills}")
    assert [i for i, _ in leaves] == list(range(n))  # each once, none missing
    assert [bytes(h).hex() for _, h in leaves] == hashes  # at its index, byte for byte
    assert index == {f"L{i:06d}": i for i in range(n)}
    assert int(client.get(TLOG_BASE_KEY)) == n and client.llen(LOG_KEYS.leaves) == 0
    assert client.hlen(LOG_KEYS.index) == 0
    assert kills >= 6, "the archiver finished before it was killed a few times: raise n"
    assert window_kills >= 2, "no kill landed between a commit and its trim: the test missed that window"
