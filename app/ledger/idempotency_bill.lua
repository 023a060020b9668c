-- The keyed auction's final write in bill mode (BillingProducer.record): one script, so one round
-- trip and one fsync, like the unkeyed MULTI (a WATCH + GET + MULTI/EXEC costs two more round trips).
-- KEYS: 1 idempotency key, 2 audit record key, 3 billing stream, 4 transparency log leaves,
--       5 transparency log index (app.ledger.tlog), 6 (optional, ARCHIVE_DSN) the archive queue,
--       7 (with 6) the count of log leaves archived and trimmed (leaf index = it + list position).
-- ARGV: 1 this request's running value, 2 the done value, 3 its ttl s, 4 the audit record, 5 its ttl s,
--       6 the log entry's leaf hash (64 hex) or '' (no entry), 7 the auction id,
--       8.. the billing event's field, value pairs.
-- Writes the audit record, the billing event, the log leaf (as log_append.lua: one per auction) and
-- the done value (and, with KEYS[6], the record key in the archive queue, scored by the server's
-- clock in ms: app.archive drains it) only where KEYS[1] still holds this request's running value,
-- or nothing (its lease lapsed and no one claimed the key since); else nothing. A script is atomic
-- and reaches the AOF as one MULTI/EXEC: after any crash all of them exist or none. (Redis refuses a
-- script for OOM before its first write, never between two.)
-- Reply: the stream id, or 0 (another request owns the key: nothing written).
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[5])
local id = redis.call('XADD', KEYS[3], '*', unpack(ARGV, 8))
if ARGV[6] ~= '' and not redis.call('HGET', KEYS[5], ARGV[7]) then
  local base = KEYS[7] and tonumber(redis.call('GET', KEYS[7]) or '0') or 0
  local size = redis.call('RPUSH', KEYS[4], ARGV[6])
  redis.call('HSET', KEYS[5], ARGV[7], base + size - 1)
end
if KEYS[6] then
  local now = redis.call('TIME')
  redis.call('ZADD', KEYS[6], tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000), KEYS[2])
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return id
