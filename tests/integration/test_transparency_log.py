"""The transparency log on a real Redis: appended in the auction's own write, durable, never rewritten.

Invariants: every final write of an auction (keyed and unkeyed bill, pending charge, no billing)
appends exactly one leaf with its record when given a log entry, none without one, none when the
write is refused (an Idempotency-Key lost), never a second for the same auction; the leaves, the index
and the signed heads survive a SIGKILL of Redis (AOF) and a new process (a fresh in-memory tree)
gives the same root; a rewrite of the log (a leaf overwritten, deleted, or made malformed, while the
sequencer runs or while it is down) is detected, counted and no head is signed over it, and the
rewritten log's consistency proof fails against the old head; another gateway's head of the same
size with another root is a fork (counted, nothing stored); two sequencers on one Redis store one
head per size, and a gateway that signs nothing reads the leaves another's head covers; the ledger's
trim never touches the log (and the log's keys never expire).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import rfc8785

from app.auction.run_control import auction_key
from app.ledger.events import make_billing_event
from app.ledger.idempotency import IdempotencyLostError, IdempotencyStore, fingerprint
from app.ledger.producer import BillingProducer
from app.ledger.tlog import LOG_KEYS
from app.ledger.trim import LedgerTrimmer
from app.settings import Settings
from app.transparency.sequencer import LogTamperedError, TransparencyLog
from app.transparency.store import LogStore
from app.verification.log_checks import check_consistency, check_inclusion
from tests.fixtures_redis import RedisServerProcess
from tests.unit.test_transparency_checks import KEYS, SIGNER


class Counted:
    """A TransparencyObserver that remembers what it was told."""

    def __init__(self) -> None:
        self.tampered: list[str] = []
        self.sizes: list[int] = []

    def log_head(self, tree_size: int, sign_seconds: float) -> None:
        self.sizes.append(tree_size)

    def log_tampered(self, kind: str) -> None:
        self.tampered.append(kind)


def statement(auction_id: str) -> bytes:
    return rfc8785.dumps({"v": 1, "kid": "k1", "auction_id": auction_id, "record_sha256": "ab" * 32})


def settings_for(server: RedisServerProcess, tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(redis_url=server.url, data_dir=tmp_path, log_json=False, **overrides)


async def write(producer: BillingProducer, auction_id: str, **kwargs: Any) -> None:
    event = make_billing_event(auction_id, {"alice": 0.5, "bob": 0.0}, "USD")
    record = json.dumps({"auction_id": auction_id, "advertisers": [{"id": "alice"}, {"id": "bob"}]})
    mode = kwargs.pop("mode", "bill")
    await producer.record(event, (auction_key(auction_id), record, 3600), mode, **kwargs)


async def append_many(server: RedisServerProcess, settings: Settings, ids: list[str]) -> None:
    client = aioredis.Redis.from_url(server.url, decode_responses=True)
    producer = BillingProducer(client, settings)
    for auction_id in ids:
        await write(producer, auction_id, log_entry=statement(auction_id))
    await client.aclose()


async def proof_of(log: TransparencyLog, auction_id: str) -> dict[str, Any]:
    index = await log.store.leaf_index(auction_id)
    assert index is not None
    head = await log.covering_head(index)
    assert head is not None
    return {
        "leaf_index": index,
        "leaf_hash": log.tree.leaf(index).hex(),
        "audit_path": [d.hex() for d in log.inclusion_path(index, head.tree_size)],
        "head": head.as_dict(),
    }


def test_every_write_path_appends_one_leaf_with_its_record(
    redis_server: RedisServerProcess, tmp_path: Path
) -> None:
    settings = settings_for(redis_server, tmp_path)

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        producer, store = BillingProducer(client, settings), IdempotencyStore(client, settings)
        log = LogStore(client)
        fp = fingerprint({"q": 1})
        written = []
        for n, (mode, keyed) in enumerate(
            [
                ("bill", False),
                ("bill", True),
                ("pending", False),
                ("pending", True),
                ("none", False),
                ("none", True),
            ]
        ):
            auction_id = f"w{n}"
            idem = None
            if keyed:
                claim = await store.claim("k", f"key{n}", fp, deadline_s=5)
                idem = store.write_for(claim, 200, "{}", auction_id)
            await write(producer, auction_id, mode=mode, idempotency=idem, log_entry=statement(auction_id))
            written.append(auction_id)
        stream_id = await producer.append(
            make_billing_event("bare", {"alice": 0.1}, "USD"), None, statement("bare")
        )
        assert stream_id.count("-") == 1  # the XADD's id, not the leaf's reply
        written.append("bare")
        await write(producer, "plain")  # no log entry: no leaf
        assert await client.get(auction_key("plain")) is not None
        assert await log.leaf_index("plain") is None
        # a lost key writes nothing, its leaf included
        lost = await store.claim("k", "lost", fp, deadline_s=5)
        await client.delete(lost.key)
        await store.claim("k", "lost", fp, deadline_s=5)
        for mode in ("bill", "pending"):
            with pytest.raises(IdempotencyLostError):
                await write(
                    producer,
                    "lost1",
                    mode=mode,
                    idempotency=store.write_for(lost, 200, "{}", "lost1"),
                    log_entry=statement("lost1"),
                )
        assert await log.leaf_index("lost1") is None
        # the same auction written again keeps its one leaf
        await write(producer, "w0", log_entry=statement("w0"))
        assert await log.size() == len(written)
        from app.transparency.proofs import leaf_hash

        for index, auction_id in enumerate(written):
            assert await log.leaf_index(auction_id) == index
            assert (await log.leaf_hashes(index, index + 1)) == [leaf_hash(statement(auction_id))]
            assert (
                auction_id == "bare" or await client.get(auction_key(auction_id)) is not None
            )  # and its record
        await client.aclose()

    asyncio.run(scenario())


def test_log_heads_and_proofs_survive_a_sigkill_and_a_new_process(
    redis_server: RedisServerProcess, tmp_path: Path
) -> None:
    settings = settings_for(redis_server, tmp_path)
    ids = [f"a{i}" for i in range(300)]

    async def before_kill() -> dict[str, Any]:
        await append_many(redis_server, settings, ids[:200])
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        log = TransparencyLog(client, settings, signer=SIGNER)
        head = await log.tick(now_ms=1_000)
        assert head is not None and head.tree_size == 200
        assert await log.tick(now_ms=2_000) == head  # nothing new: no new head
        await client.aclose()
        return head.as_dict()

    old_head = asyncio.run(before_kill())
    redis_server.kill()  # SIGKILL: only what the AOF holds comes back
    redis_server.restart()

    async def after_restart() -> None:
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        log = TransparencyLog(client, settings, signer=SIGNER)  # a new process: an empty tree
        again = await log.tick(now_ms=3_000)
        assert again is not None and again.as_dict() == old_head  # same leaves, same root, no new head
        assert log.tree.root(200).hex() == old_head["root_hash"]
        for auction_id in ("a0", "a117", "a199"):
            assert all(
                c.ok for c in check_inclusion(statement(auction_id), await proof_of(log, auction_id), KEYS)
            )
        await append_many(redis_server, settings, ids[200:])
        new_head = await log.tick(now_ms=4_000)
        assert new_head is not None and new_head.tree_size == 300
        proof = {
            "first": 200,
            "second": 300,
            "consistency_path": [d.hex() for d in log.consistency_path(200, 300)],
        }
        assert all(c.ok for c in check_consistency(old_head, new_head.as_dict(), proof, KEYS))
        heads = await client.zrange(LOG_KEYS.heads, 0, -1, withscores=True)
        assert [int(score) for _, score in heads] == [200, 300]
        await client.aclose()

    asyncio.run(after_restart())


REWRITES = {
    "overwrite": ("rewritten", lambda c: c.lset(LOG_KEYS.leaves, 7, "00" * 32)),
    "delete_last": ("rewritten", lambda c: c.rpop(LOG_KEYS.leaves)),  # the next append takes its place
    "truncate": ("deleted", lambda c: c.ltrim(LOG_KEYS.leaves, 0, 9)),
    "delete_middle_and_append": (
        "rewritten",
        lambda c: c.eval(
            "local v = redis.call('LINDEX', KEYS[1], 3); redis.call('LREM', KEYS[1], 1, v);"
            "return redis.call('RPUSH', KEYS[1], string.rep('ab', 32))",
            1,
            LOG_KEYS.leaves,
        ),
    ),
    "malformed": ("malformed", lambda c: c.lset(LOG_KEYS.leaves, 2, "not a hash")),
}


@pytest.mark.parametrize("restart", [False, True], ids=["while-running", "while-down"])
@pytest.mark.parametrize("rewrite", sorted(REWRITES))
def test_a_rewritten_log_is_never_signed(
    redis_server: RedisServerProcess, tmp_path: Path, rewrite: str, restart: bool
) -> None:
    kind, edit = REWRITES[rewrite]
    settings = settings_for(redis_server, tmp_path)

    async def scenario() -> None:
        await append_many(redis_server, settings, [f"r{i}" for i in range(20)])
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        observer = Counted()
        log = TransparencyLog(client, settings, signer=SIGNER, observer=observer)
        old = await log.tick(now_ms=1_000)
        assert old is not None and old.tree_size == 20
        await edit(client)
        if restart:
            log = TransparencyLog(client, settings, signer=SIGNER, observer=observer)
        await append_many(redis_server, settings, [f"s{i}" for i in range(5)])  # the log grows on
        for _ in range(3):
            with pytest.raises(LogTamperedError) as caught:
                await log.tick(now_ms=2_000)
            assert caught.value.kind == kind
        assert observer.tampered == [kind]  # counted once per incident, logged
        assert await log.store.latest_head() == old  # nothing signed over it
        with pytest.raises(LogTamperedError):
            await log.covering_head(0)
        if kind == "rewritten":  # the rewritten log does not extend the old head
            fresh = TransparencyLog(client, settings)
            hashes = await fresh.store.leaf_hashes(0, await fresh.store.size())
            fresh.tree.append_leaf_hashes(hashes)
            size = fresh.tree.size
            proof = {
                "first": 20,
                "second": size,
                "consistency_path": [d.hex() for d in fresh.consistency_path(20, size)],
            }
            from app.transparency.heads import sign_head

            forged = sign_head(size, fresh.tree.root(size), 3_000, SIGNER).as_dict()  # even if signed
            checks = check_consistency(old.as_dict(), forged, proof, KEYS)
            assert [c.name for c in checks if not c.ok] == ["log.consistency"]
        await client.aclose()

    asyncio.run(scenario())


def test_two_sequencers_store_one_head_per_size(redis_server: RedisServerProcess, tmp_path: Path) -> None:
    settings = settings_for(redis_server, tmp_path)

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        logs = [TransparencyLog(client, settings, signer=SIGNER) for _ in range(2)]
        for round_ in range(6):
            await append_many(redis_server, settings, [f"g{round_}-{i}" for i in range(round_ + 1)])
            heads = await asyncio.gather(
                *(log.tick(now_ms=1_000 + round_ * 10 + n) for n, log in enumerate(logs))
            )
            assert heads[0] == heads[1]  # the loser read back the winner's head (same size, same root)
        stored = await client.zrange(LOG_KEYS.heads, 0, -1, withscores=True)
        sizes = [int(score) for _, score in stored]
        assert sizes == sorted(set(sizes)) and sizes[-1] == 21
        stamps = [json.loads(member)["timestamp_ms"] for member, _ in stored]
        assert stamps == sorted(stamps)
        reader = TransparencyLog(client, settings)  # a gateway that signs nothing serves proofs too
        proof = await proof_of(reader, "g5-3")
        assert reader.tree.size == 21 and all(c.ok for c in check_inclusion(statement("g5-3"), proof, KEYS))
        await client.aclose()

    asyncio.run(scenario())


def test_the_ledger_trim_leaves_the_log_alone(redis_server: RedisServerProcess, tmp_path: Path) -> None:
    settings = settings_for(
        redis_server, tmp_path, billing_retention_s=1, auction_deadline_s=0.5, billing_append_timeout_s=0.2
    )

    async def scenario() -> None:
        await append_many(redis_server, settings, [f"t{i}" for i in range(10)])
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        await TransparencyLog(client, settings, signer=SIGNER).tick()
        before = {key: await client.dump(key) for key in (LOG_KEYS.leaves, LOG_KEYS.index, LOG_KEYS.heads)}
        await asyncio.sleep(1.3)
        await client.xadd(settings.billing_stream, {"later": "1"})
        await client.xgroup_create(settings.billing_stream, settings.billing_group, id="$")  # all delivered
        assert (await LedgerTrimmer(client, settings).trim_once()).entries == 10  # the trim did run
        for key, value in before.items():
            assert await client.dump(key) == value
            assert await client.ttl(key) == -1  # never expires
        await client.aclose()

    asyncio.run(scenario())


def test_redis_keeps_the_latest_heads_only(redis_server: RedisServerProcess, tmp_path: Path) -> None:
    """TRANSPARENCY_HEADS_KEPT bounds the heads in Redis (the oldest go first); the leaves stay."""
    settings = settings_for(redis_server, tmp_path, transparency_heads_kept=3)

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        log = TransparencyLog(client, settings, signer=SIGNER)
        for round_ in range(5):
            await append_many(redis_server, settings, [f"k{round_}"])
            await log.tick(now_ms=round_)
        stored = await client.zrange(LOG_KEYS.heads, 0, -1, withscores=True)
        assert [int(score) for _, score in stored] == [3, 4, 5]
        assert await client.llen(LOG_KEYS.leaves) == 5
        await client.aclose()

    asyncio.run(scenario())


def test_a_head_of_the_same_size_with_another_root_is_a_fork(
    redis_server: RedisServerProcess, tmp_path: Path
) -> None:
    """Another gateway stores a head of the size this one signs, with another root, between this
    one's checks and its store: this one stores nothing, counts a `fork` and stops signing."""
    settings = settings_for(redis_server, tmp_path)

    async def scenario() -> None:
        await append_many(redis_server, settings, [f"f{i}" for i in range(9)])
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        observer = Counted()
        log = TransparencyLog(client, settings, signer=SIGNER, observer=observer)
        store_head = log.store.put_head

        async def racing_put(head: Any) -> Any:
            from app.transparency.heads import sign_head

            other = sign_head(head.tree_size, bytes(32), head.timestamp_ms, SIGNER)
            await client.zadd(LOG_KEYS.heads, {other.canonical().decode(): other.tree_size})
            return await store_head(head)

        log.store.put_head = racing_put  # type: ignore[method-assign]
        with pytest.raises(LogTamperedError) as caught:
            await log.tick()
        assert caught.value.kind == "fork" and observer.tampered == ["fork"] and observer.sizes == []
        assert await client.zcard(LOG_KEYS.heads) == 1  # only the other gateway's head
        await client.aclose()

    asyncio.run(scenario())
