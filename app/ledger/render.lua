-- A render charge's one transition (app.ledger.render): pending -> billed (with the XADD of its
-- billing event) or pending -> expired, once; the counts change in the same script.
-- KEYS: charge hash, billing stream, due set, counts. ARGV: now_ms, action (render|expire), auction id.
-- Reply: {state after, stream id or '', 1 if this call changed the state else 0, the event's campaigns
-- JSON or '', its fcap JSON or ''} (app.ledger.render voids the budget reservations and frequency cap
-- slots of a charge this call expired).
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing', '', 0, '', ''} end
local fields = cjson.decode(redis.call('HGET', KEYS[1], 'event'))
local campaigns, fcap = fields['campaigns'] or '', fields['fcap'] or ''
if state ~= 'pending' then return {state, redis.call('HGET', KEYS[1], 'stream_id') or '', 0, campaigns, fcap} end
local now = tonumber(ARGV[1])
local deadline = tonumber(redis.call('HGET', KEYS[1], 'deadline_ms'))
if ARGV[2] == 'render' and now <= deadline then
  local flat = {}
  for k, v in pairs(fields) do flat[#flat + 1] = k; flat[#flat + 1] = v end
  local id = redis.call('XADD', KEYS[2], '*', unpack(flat))
  redis.call('HSET', KEYS[1], 'state', 'billed', 'stream_id', id, 'changed_at_ms', ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[3])
  redis.call('HINCRBY', KEYS[4], 'pending', -1)
  redis.call('HINCRBY', KEYS[4], 'billed', 1)
  return {'billed', id, 1, campaigns, fcap}
end
if now > deadline then
  redis.call('HSET', KEYS[1], 'state', 'expired', 'changed_at_ms', ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[3])
  redis.call('HINCRBY', KEYS[4], 'pending', -1)
  redis.call('HINCRBY', KEYS[4], 'expired', 1)
  return {'expired', '', 1, campaigns, fcap}
end
return {'pending', '', 0, campaigns, fcap}
