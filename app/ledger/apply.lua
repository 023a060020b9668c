-- apply.lua: apply one billing event exactly once (LedgerConsumer, one EVALSHA per event).
-- KEYS: 1 applied, 2 balances, 3 meta, 4 duplicates, 5.. the history list of each advertiser
-- ARGV: 1 the event as a JSON array of strings [stream id, auction id, created_at_ms, currency,
--       revenue, adv1, p1, adv2, p2, ...] (advertisers sorted; strings because cjson would turn numbers
--       into doubles; one argument because packing arguments is the consumer's main CPU cost),
--       2 the ledger's currency, 3 the history key prefix, 4 (optional) the event's campaigns as
--       canonical JSON {advertiser id: campaign id} (each a paid advertiser of the event)
-- The marker is {s: stream id, f: canonical payload, c: campaigns JSON (only when the event has
-- campaigns)}: an event without campaigns keeps the canonical form it always had. Payments are never
-- negative: a negative one is invalid.
-- Returns {outcome, detail}. Everything is validated before the first write: a Lua error after a
-- write would not roll the earlier writes back.
local function invalid(reason) return {'invalid', reason} end
local function is_int(s)
  if type(s) ~= 'string' or #s == 0 or #s > 16 then return false end
  return s == '0' or string.match(s, '^%-?[1-9]%d*$') ~= nil
end
local MAX_ABS = 10000000000000
local MAX_N = 256
local MAX_ID = 256
if #ARGV ~= 3 and #ARGV ~= 4 then return invalid('argument count does not match') end
local ok, e = pcall(cjson.decode, ARGV[1])
if not ok or type(e) ~= 'table' or #e < 5 or (#e - 5) % 2 ~= 0 then
  return invalid('event is not an array of pairs')
end
for i = 1, #e do
  if type(e[i]) ~= 'string' then return invalid('event element ' .. i .. ' is not a string') end
end
local sid, aid, created, cur, rev = e[1], e[2], e[3], e[4], e[5]
local ledger_cur, hprefix = ARGV[2], ARGV[3]
local n = (#e - 5) / 2
if n > MAX_N then return invalid('too many advertisers') end
if #KEYS ~= 4 + n then return invalid('key count does not match') end
if #aid == 0 or #aid > MAX_ID then return invalid('bad auction id') end
if not is_int(created) or string.sub(created, 1, 1) == '-' then return invalid('bad created_at_ms') end
if cur ~= ledger_cur then return invalid('currency ' .. cur .. ' but the ledger is in ' .. ledger_cur) end
if not is_int(rev) then return invalid('revenue_micro is not an integer') end
local seen = {}
local sum = 0
local parts = {created, cur, rev}
local accounts = {}
for i = 1, n do
  local adv, p = e[4 + 2 * i], e[5 + 2 * i]
  if #adv == 0 or #adv > MAX_ID then return invalid('bad advertiser id') end
  if seen[adv] then return invalid('advertiser ' .. adv .. ' appears twice') end
  seen[adv] = true
  if not is_int(p) then return invalid('payment of ' .. adv .. ' is not an integer') end
  if string.sub(p, 1, 1) == '-' then return invalid('payment of ' .. adv .. ' is negative') end
  local v = tonumber(p)
  if v > MAX_ABS then return invalid('payment of ' .. adv .. ' is too large') end
  if KEYS[4 + i] ~= hprefix .. adv then return invalid('history key of ' .. adv .. ' does not match') end
  sum = sum + v
  parts[#parts + 1] = adv
  parts[#parts + 1] = p
  accounts[i] = 'advertiser:' .. adv
end
if sum ~= tonumber(rev) then return invalid('revenue_micro ' .. rev .. ' is not the sum of the payments') end
local canon = cjson.encode(parts)
local camp = ARGV[4]
if camp == '' then camp = nil end
if camp then
  local okc, c = pcall(cjson.decode, camp)
  if not okc or type(c) ~= 'table' or next(c) == nil then return invalid('campaigns is not a JSON object') end
  for adv, cid in pairs(c) do
    if type(adv) ~= 'string' or not seen[adv] then return invalid('campaign of an advertiser without a payment') end
    if type(cid) ~= 'string' or #cid == 0 or #cid > MAX_ID then return invalid('bad campaign id') end
  end
end
local existing = redis.call('HGET', KEYS[1], aid)
if existing then
  local rec = cjson.decode(existing)
  if rec['f'] == canon and rec['c'] == camp then
    if rec['s'] == sid then return {'redelivered', sid} end
    if redis.call('HSETNX', KEYS[4], sid, aid) == 1 then redis.call('HINCRBY', KEYS[3], 'duplicates', 1) end
    return {'duplicate', rec['s']}
  end
  return {'conflict', 'auction ' .. aid .. ' was applied from ' .. rec['s'] .. ' with a different payload: '
    .. rec['f'] .. (rec['c'] and (' ' .. rec['c']) or '') .. ' vs ' .. canon .. (camp and (' ' .. camp) or '')}
end
for i = 1, n do
  local t = redis.call('TYPE', KEYS[4 + i])['ok']
  if t ~= 'none' and t ~= 'list' then return invalid('history key ' .. KEYS[4 + i] .. ' holds a ' .. t) end
end
accounts[n + 1] = 'platform:revenue'
local current = redis.call('HMGET', KEYS[2], unpack(accounts))
for i = 1, n + 1 do
  if current[i] and math.abs(tonumber(current[i])) > 4e18 then
    return invalid('account ' .. accounts[i] .. ' is near the 64-bit limit')
  end
end
-- all checks passed: the writes
redis.call('HSET', KEYS[1], aid, cjson.encode({s = sid, f = canon, c = camp}))
for i = 1, n do
  local adv, p = e[4 + 2 * i], e[5 + 2 * i]
  redis.call('HINCRBY', KEYS[2], accounts[i], p == '0' and '0' or '-' .. p)
  redis.call('RPUSH', KEYS[4 + i], '{"auction_id":' .. cjson.encode(aid) .. ',"stream_id":"' .. sid ..
    '","created_at_ms":' .. created .. ',"payment_micro":' .. p .. '}')
end
redis.call('HINCRBY', KEYS[2], 'platform:revenue', rev)
return {'applied', sid}
