-- dead_letter.lua: record one stream entry in the dead-letter stream (LedgerConsumer._dead_letter).
-- KEYS: 1 dead (hash), 2 dead-letter stream, 3 meta
-- ARGV: 1 stream id, 2 kind, 3 reason, 4 deliveries, 5 consumer, 6 auction id, 7 the entry as JSON
-- Idempotent by stream id: a redelivered entry is written to the dead-letter stream only once.
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', 'stream_id', ARGV[1], 'kind', ARGV[2], 'reason', ARGV[3],
  'deliveries', ARGV[4], 'consumer', ARGV[5], 'auction_id', ARGV[6], 'event', ARGV[7])
redis.call('HINCRBY', KEYS[3], 'dead_letters', 1)
if ARGV[2] == 'conflict' then redis.call('HINCRBY', KEYS[3], 'conflicts', 1) end
return 1
