"""The key layout on a Redis Cluster (issue 36, app.ledger.keys): pure, property-based.

Every Lua script and MULTI of the bill, the apply, the dead-lettering, the trim and the render touches
keys of ONE cluster slot (Redis refuses a script or transaction across slots: CROSSSLOT), whatever the
auction id, the Idempotency-Key, the API key and the advertisers; and on one Redis (REDIS_CLUSTER off,
the embedded default) every key keeps the name it had before the cluster layout, so existing data is
read as before. Slots computed by redis-py's CRC16 (`redis.crc.key_slot`), as the server does.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from app.auction.run_control import auction_key
from app.ledger.idempotency import redis_key
from app.ledger.keys import (
    ARCHIVE_QUEUE_KEY,
    BARRIER_KEY,
    LedgerKeys,
    archive_queue_key,
    dead_stream_key,
    hot_key,
    hot_tag,
    shard_tag,
    stream_key,
)
from app.ledger.render import charge_key, counts_key, due_key
from app.ledger.tlog import log_keys, log_keys_for
from app.settings import Settings

CLUSTER = Settings(redis_url="redis://127.0.0.1:7000/0", redis_cluster=True)
SINGLE = Settings(redis_url="redis://127.0.0.1:6379/0")
ids = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=64)


def slots(keys: list[str]) -> set[int]:
    return {key_slot(key.encode()) for key in keys}


def bill_keys(settings: Settings, auction_id: str, key_id: str, idem: str) -> list[str]:
    """KEYS of idempotency_bill.lua (and the unkeyed MULTI's keys, a subset)."""
    tag = hot_tag(settings)
    return [
        redis_key(key_id, idem, tag),
        auction_key(auction_id, settings),
        stream_key(settings),
        *log_keys(log_keys_for(tag)),
        archive_queue_key(settings),
        hot_key(settings, BARRIER_KEY),
    ]


def ledger_keys(settings: Settings, advertisers: list[str]) -> list[str]:
    """apply.lua, trim.lua and dead_letter.lua's keys (history lists included: trim builds their names)."""
    keys = LedgerKeys.of(settings)
    return [
        keys.applied, keys.balances, keys.meta, keys.duplicates, keys.dead, keys.settled,
        stream_key(settings), dead_stream_key(settings), *(keys.history(a) for a in advertisers),
    ]  # fmt: skip


@given(auction_id=ids, key_id=ids, idem=ids, advertisers=st.lists(ids, min_size=1, max_size=6))
def test_every_script_of_the_bill_and_the_ledger_touches_one_slot(
    auction_id: str, key_id: str, idem: str, advertisers: list[str]
) -> None:
    """Invariant: on a cluster the bill's keys, the ledger's keys and the render charge's keys are all
    in the slot of the ledger shard's hash tag (no CROSSSLOT, whatever the ids)."""
    render = [charge_key(auction_id, CLUSTER), due_key(CLUSTER), counts_key(CLUSTER)]
    every = bill_keys(CLUSTER, auction_id, key_id, idem) + ledger_keys(CLUSTER, advertisers) + render
    assert slots(every) == {key_slot(shard_tag(0).strip("{}").encode())}


@given(auction_id=ids, key_id=ids, idem=ids, advertisers=st.lists(ids, min_size=1, max_size=3))
def test_one_redis_keeps_the_names_it_always_had(
    auction_id: str, key_id: str, idem: str, advertisers: list[str]
) -> None:
    """Invariant: without REDIS_CLUSTER no key is renamed (data written before the cluster layout is
    read as before)."""
    assert bill_keys(SINGLE, auction_id, key_id, idem)[:6] == [
        redis_key(key_id, idem),
        f"mosaic:auction:{auction_id}",
        "mosaic:billing",
        "mosaic:tlog:leaves",
        "mosaic:tlog:index",
        ARCHIVE_QUEUE_KEY,
    ]
    keys = LedgerKeys.of(SINGLE)
    assert (keys.applied, keys.settled, keys.history(advertisers[0])) == (
        "mosaic:ledger:applied",
        "mosaic:ledger:settled",
        f"mosaic:ledger:history:{advertisers[0]}",
    )
    assert charge_key(auction_id, SINGLE) == charge_key(auction_id) == f"mosaic:render:charge:{auction_id}"
    assert dead_stream_key(SINGLE) == "mosaic:billing:dead"


def test_shards_are_distinct_slots_and_a_cluster_needs_a_url() -> None:
    """Shard tags name different slots (the N-shard layout spreads over primaries); REDIS_CLUSTER without
    REDIS_URL is refused (the embedded Redis is one server)."""
    assert len({key_slot(shard_tag(k).strip("{}").encode()) for k in range(16)}) == 16
    try:
        Settings(redis_cluster=True)
    except ValueError as error:
        assert "REDIS_URL" in str(error)
    else:  # pragma: no cover - the check is the point
        raise AssertionError("REDIS_CLUSTER without REDIS_URL was accepted")
