-- Appends one entry's leaf hash to the transparency log (app.ledger.tlog, docs/DESIGN.md § Verifiable
-- auctions), queued by EVAL in the auction's MULTI (app.ledger.producer) so it commits with the record.
-- KEYS: 1 the leaves list, 2 the index hash (auction id -> leaf index), 3 (optional, ARCHIVE_DSN) the
--       count of leaves archived and trimmed from the list's front (a leaf's index = it + list position).
-- ARGV: 1 the auction id, 2 the leaf hash (64 hex: SHA-256(0x00 || entry), RFC 9162 §2.1.1).
-- An auction already in the log keeps its leaf (nothing appended: one leaf per auction, never two).
-- Reply: the auction's leaf index (from 0).
local existing = redis.call('HGET', KEYS[2], ARGV[1])
if existing then return tonumber(existing) end
local base = KEYS[3] and tonumber(redis.call('GET', KEYS[3]) or '0') or 0
local size = redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], base + size - 1)
return base + size - 1
