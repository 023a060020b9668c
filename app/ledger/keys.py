"""The ledger's Redis keys and account names, and Redis replies read as text.

Job: name every key the ledger keeps in Redis (`LedgerKeys`, the account names) and decode reply
elements to ``str`` (`as_str`, `decode_fields`) whether or not the client was created with
``decode_responses``. Imports the standard library only.

Redis keys of the ledger (prefix ``mosaic:ledger:``):

``applied``  hash auction id -> ``{"s": stream id, "f": canonical payload}``: the idempotency marker
             and the record every balance is recomputed from by `reconcile`.
``balances`` hash account -> micro-units. Double entry: an advertiser's payment ``p`` debits
             ``advertiser:<id>`` by ``p`` and credits ``platform:revenue`` by ``p``; the sum over all
             accounts is always 0. An advertiser's balance is therefore minus what it has paid;
             payments are never negative (apply.lua refuses one), so it only goes down.
``history:<advertiser id>``  list of JSON entries (auction id, stream id, created_at_ms,
             payment_micro), in apply order; an entry is removed with its auction's marker once
             older than BILLING_RETENTION_S (trim.lua); its length is the number of auctions billed to
             the advertiser within the retention (``settled`` counts the others).
``settled``  hash of what trim.lua folded in when it removed old markers and history entries:
             ``balance:<account>`` micro-units, ``auctions:<advertiser id>``, ``events``. Balances are
             never trimmed: balance = settled + the sum of the remaining markers (reconcile checks it).
``meta``     hash of counters: duplicates, conflicts, dead_letters (events applied = HLEN applied).
             The script does as few Redis calls as it can (4 + 2 per advertiser): throughput.
``dead``     hash stream id -> kind: makes dead-lettering idempotent (each stream entry is written to
             the dead-letter stream at most once, however often it is redelivered).
``duplicates`` hash stream id -> auction id: a second stream entry with the same auction id and the
             same payload (a producer retry): acknowledged, counted once, not applied again.
``mosaic:archive:queue`` (issue 36, only with ARCHIVE_DSN) sorted set: audit record key -> ms when
             written, added in the record's own atomic write; app.archive drains it (archived, then
             dropped from Redis). ``ARCHIVE_QUEUE_KEY``; ``mosaic:archive:lease`` the archivers' lease.
``mosaic:tlog:base`` (issue 36, only with ARCHIVE_DSN) integer: how many of the transparency log's
             first leaves were archived to PostgreSQL and trimmed from the front of ``mosaic:tlog:leaves``
             (a leaf's index is base + its list position). Only app.archive.tlog writes it (LTRIM and
             INCRBY in one MULTI, after the commit); absent = 0. ``TLOG_BASE_KEY``.

On a Redis Cluster (REDIS_CLUSTER=true, issue 36) every key written together with an auction's bill -
the billing and dead-letter streams, the audit record, the Idempotency-Key, the transparency log, the
render charges, the archive queue, the ledger's keys above, the health probe - carries the ledger
shard's hash tag ``{ledger:s0}`` as a prefix (`hot_tag`, `hot_key`), so each Lua script and MULTI of
the bill, the apply, the trim, the render and the archive touches one slot. On one Redis (the embedded
default, or REDIS_URL without REDIS_CLUSTER) the tag is empty: the key names are today's, so existing
data is read as before (no rename, no migration). Campaign keys keep their own per-campaign tags
(``mosaic:budget:{<id>}``, app.ledger.budget): a budget script touches one campaign's key only.
See docs/DESIGN.md § Billing, § Bounded Redis memory and § The hot state on a Redis Cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

LEDGER_PREFIX = "mosaic:ledger:"
PLATFORM_ACCOUNT = "platform:revenue"
ADVERTISER_ACCOUNT_PREFIX = "advertiser:"
ARCHIVE_QUEUE_KEY = "mosaic:archive:queue"
ARCHIVE_LEASE_KEY = "mosaic:archive:lease"  # app.archive.lease: one archiver at a time
TLOG_BASE_KEY = "mosaic:tlog:base"  # leaves archived and trimmed from the log's list (app.archive.tlog)
AUCTION_KEY_PREFIX = "mosaic:auction:"  # the audit records (app.auction.run_control.auction_key)
# REDIS_CLUSTER: the tiny write a WAIT barrier makes in the shard's slot (app.ledger.cluster.wait_replicated)
BARRIER_KEY = "mosaic:replication:barrier"


def shard_tag(shard: int) -> str:
    """The hash tag of ledger shard `shard` on a Redis Cluster: all of that shard's keys in one slot."""
    return "{ledger:s" + str(shard) + "}"


# The hash tag of the ledger's shard 0 (the one the service writes today: DESIGN.md § The hot state
# on a Redis Cluster; shards > 0 are the N-shard layout's, used by bench/ledger.py --cluster so far).
CLUSTER_SHARD_TAG = shard_tag(0)


class KeySettings(Protocol):
    """What the key names depend on (app.settings.Settings has these fields)."""

    redis_cluster: bool
    billing_stream: str
    billing_dead_letter_stream: str


def hot_tag(settings: KeySettings, shard: int = 0) -> str:
    """The prefix of every hot key: the shard's hash tag on a Redis Cluster, else '' (today's names)."""
    return shard_tag(shard) if settings.redis_cluster else ""


def hot_key(settings: KeySettings, name: str, shard: int = 0) -> str:
    """`name` (a key of the single-Redis layout) as it is named on this deployment."""
    return hot_tag(settings, shard) + name


def stream_key(settings: KeySettings, shard: int = 0) -> str:
    """The billing stream (BILLING_STREAM, with the shard's tag on a cluster)."""
    return hot_key(settings, settings.billing_stream, shard)


def dead_stream_key(settings: KeySettings, shard: int = 0) -> str:
    """The dead-letter stream (BILLING_DEAD_LETTER_STREAM, with the shard's tag on a cluster)."""
    return hot_key(settings, settings.billing_dead_letter_stream, shard)


def auction_record_key(settings: KeySettings, auction_id: str) -> str:
    """The audit record of one auction."""
    return hot_key(settings, AUCTION_KEY_PREFIX + auction_id)


def archive_queue_key(settings: KeySettings) -> str:
    """The archive queue (written in the record's own atomic write: the record's slot)."""
    return hot_key(settings, ARCHIVE_QUEUE_KEY)


@dataclass(frozen=True)
class LedgerKeys:
    applied: str
    balances: str
    meta: str
    duplicates: str
    dead: str
    history_prefix: str
    settled: str = LEDGER_PREFIX + "settled"

    @classmethod
    def default(cls, tag: str = "") -> LedgerKeys:
        """The ledger's keys; `tag`: the shard's hash tag on a Redis Cluster (`hot_tag`)."""
        p = tag + LEDGER_PREFIX
        return cls(
            applied=p + "applied",
            balances=p + "balances",
            meta=p + "meta",
            duplicates=p + "duplicates",
            dead=p + "dead",
            history_prefix=p + "history:",
            settled=p + "settled",
        )

    @classmethod
    def of(cls, settings: KeySettings, shard: int = 0) -> LedgerKeys:
        return cls.default(hot_tag(settings, shard))

    def history(self, advertiser_id: str) -> str:
        return self.history_prefix + advertiser_id


def as_str(value: Any) -> str:
    """A reply element as str (clients with or without decode_responses)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    return str(value)


def decode_fields(raw: Any) -> dict[str, str]:
    if not raw:
        return {}
    return {as_str(k): as_str(v) for k, v in dict(raw).items()}
