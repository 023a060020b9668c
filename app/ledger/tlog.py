"""The transparency log's Redis keys and its append, written in the auction's own atomic write.

Job: name the log's keys and queue the append of one entry in the caller's MULTI (`queue_log_append`:
an EVAL of ``log_append.lua``), or give the keyed bill script its arguments (`log_keys`,
`log_args`). The producer (app.ledger.producer) calls these, so an auction's record, its billing
write and its log leaf commit together or not at all. The tree, the signed heads and the proofs are
app.transparency (above this layer). Imports the standard library, app.ledger.scripts and
app.ledger.keys only.

Redis keys (prefix ``mosaic:tlog:``), never expiring; app.ledger.trim does not know them. Without
ARCHIVE_DSN the leaves and the index are never trimmed; with it app.archive.tlog archives them to
PostgreSQL and only then trims them (issue 36):

``leaves``  list of leaf hashes, 64 hex each: SHA-256(0x00 || entry) (RFC 9162 §2.1.1), in log order
            (leaf index = ``base`` + list position, from 0). Only RPUSH appends; only the archiver's
            LTRIM of the front (with its INCRBY of ``base`` in one MULTI) removes.
``index``   hash auction id -> leaf index (written in the same script as the RPUSH: one leaf per
            auction); an entry leaves it once archived, after its leaf.
``base``    (``TLOG_BASE_KEY``, ARCHIVE_DSN only) how many leaves were archived and trimmed; absent: 0.
``heads``   sorted set of signed tree heads (canonical JSON) scored by tree size: one per size, the
            latest TRANSPARENCY_HEADS_KEPT (app.transparency.store).
See docs/DESIGN.md § Verifiable auctions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from app.ledger.keys import TLOG_BASE_KEY
from app.ledger.scripts import LOG_APPEND_SCRIPT

TLOG_PREFIX = "mosaic:tlog:"


@dataclass(frozen=True)
class LogKeys:
    leaves: str = TLOG_PREFIX + "leaves"
    index: str = TLOG_PREFIX + "index"
    heads: str = TLOG_PREFIX + "heads"
    base: str = TLOG_BASE_KEY


LOG_KEYS = LogKeys()


def log_keys_for(tag: str) -> LogKeys:
    """The log's keys with the ledger shard's hash tag (app.ledger.keys.hot_tag; '' on one Redis)."""
    if not tag:
        return LOG_KEYS
    return LogKeys(tag + LOG_KEYS.leaves, tag + LOG_KEYS.index, tag + LOG_KEYS.heads, tag + LOG_KEYS.base)


def leaf_hash_hex(entry: bytes) -> str:
    """RFC 9162 §2.1.1: the leaf hash of one entry, SHA-256(0x00 || entry), as 64 hex digits (the same
    rule as app.transparency.proofs.leaf_hash, which the client imports without this layer)."""
    return hashlib.sha256(b"\x00" + entry).hexdigest()


def queue_log_append(
    pipe: Any, auction_id: str, entry: bytes, keys: LogKeys = LOG_KEYS, archived: bool = False
) -> None:
    """Queue, in the caller's MULTI, the append of `entry` as the auction's leaf (`archived`: ARCHIVE_DSN,
    the index counts the leaves trimmed, ``base``). EVAL, not EVALSHA: a NOSCRIPT inside EXEC would fail
    this command alone and commit the others."""
    names = [keys.leaves, keys.index, *([keys.base] if archived else [])]
    pipe.eval(LOG_APPEND_SCRIPT, len(names), *names, auction_id, leaf_hash_hex(entry))


def log_keys(keys: LogKeys = LOG_KEYS) -> list[str]:
    """KEYS 4 and 5 of idempotency_bill.lua."""
    return [keys.leaves, keys.index]


def log_args(auction_id: str, entry: bytes | None) -> list[str]:
    """ARGV 6 and 7 of idempotency_bill.lua: the leaf hash ('' without an entry) and the auction id."""
    return ["" if entry is None else leaf_hash_hex(entry), auction_id]
