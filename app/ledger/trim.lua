-- trim.lua: bound the ledger's Redis memory (LedgerTrimmer, app/ledger/trim.py; DESIGN.md, Bounded
-- Redis memory). One call trims at most ARGV[3] stream entries, atomically.
-- KEYS: 1 billing stream, 2 applied (markers), 3 settled (totals folded in), 4 duplicates
-- ARGV: 1 retention ms, 2 re-append window ms (the longest an auction's event may be appended after
--       its first append: AUCTION_DEADLINE_S + BILLING_APPEND_TIMEOUT_S), 3 batch, 4 history key prefix
-- Returns {entries trimmed, markers settled, threshold ms (0: nothing may be trimmed)}.
--
-- THE INVARIANT (never trim what can still be delivered, never forget what can still be redelivered):
-- threshold T (ms) = min over every group G of (min(G's oldest pending id, G's last-delivered id) - W),
-- and now - R (Redis clock), with W the re-append window and R > W the retention (Settings checks it).
-- Only entries with id < T are removed (XTRIM MINID T: exact, never MAXLEN). Such an entry is at
-- least W older than every group's oldest pending entry and last-delivered id, so it was delivered to
-- every group, is pending in none, and can never be delivered again (XREADGROUP > reads only past
-- last-delivered, XAUTOCLAIM claims only pending entries). The applied marker of auction A, applied
-- from entry s < T, is deleted with s: every other entry of A was appended within W of s, hence lies
-- below every pending/last-delivered id too (never redelivered), and no new entry of A can come (now >
-- s + R > s + W). So a marker is never missing when an entry of its auction is delivered: exactly-once
-- holds. Deleted markers and their history entries are folded into KEYS[3] (per account balance, per
-- advertiser count, events, and per campaign `campaign:<id>` the payments of the markers that carry
-- campaigns) so that reconcile recomputes the same balances and campaign spend.
local stream, applied, settled, duplicates = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local retention_ms, window_ms = tonumber(ARGV[1]), tonumber(ARGV[2])
local batch, hprefix = tonumber(ARGV[3]), ARGV[4]
if redis.call('EXISTS', stream) == 0 then return {0, 0, 0} end
local function id_ms(id) return tonumber(string.match(id, '^(%d+)-')) end
local groups = redis.call('XINFO', 'GROUPS', stream)
if #groups == 0 then return {0, 0, 0} end
local t = redis.call('TIME')
local threshold = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - retention_ms
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local floor = id_ms(info['last-delivered-id'])
  local pending = redis.call('XPENDING', stream, info['name'])
  if tonumber(pending[1]) > 0 and id_ms(pending[2]) < floor then floor = id_ms(pending[2]) end
  if floor - window_ms < threshold then threshold = floor - window_ms end
end
if threshold <= 0 then return {0, 0, 0} end
local entries = redis.call('XRANGE', stream, '-', '(' .. threshold .. '-0', 'COUNT', batch + 1)
local last = #entries
local minid = threshold .. '-0'
if last > batch then
  minid = entries[last][1]
  last = batch
end
local settled_count = 0
for i = 1, last do
  local sid, fields = entries[i][1], entries[i][2]
  local aid
  for j = 1, #fields, 2 do if fields[j] == 'auction_id' then aid = fields[j + 1] end end
  redis.call('HDEL', duplicates, sid)
  local raw = aid and redis.call('HGET', applied, aid)
  if raw then
    local rec = cjson.decode(raw)
    if rec['s'] == sid then
      local f = cjson.decode(rec['f'])  -- [created_at_ms, currency, revenue, adv1, p1, ...]
      local camp = rec['c'] and cjson.decode(rec['c']) or {}
      for k = 4, #f, 2 do
        local adv, p = f[k], f[k + 1]
        local neg
        if p == '0' then neg = '0'
        elseif string.sub(p, 1, 1) == '-' then neg = string.sub(p, 2)
        else neg = '-' .. p end
        if camp[adv] then redis.call('HINCRBY', settled, 'campaign:' .. camp[adv], p) end
        -- the exact entry apply.lua appended
        redis.call('LREM', hprefix .. adv, 1, '{"auction_id":' .. cjson.encode(aid) .. ',"stream_id":"' ..
          sid .. '","created_at_ms":' .. f[1] .. ',"payment_micro":' .. p .. '}')
        redis.call('HINCRBY', settled, 'balance:advertiser:' .. adv, neg)
        redis.call('HINCRBY', settled, 'auctions:' .. adv, 1)
      end
      redis.call('HINCRBY', settled, 'balance:platform:revenue', f[3])
      redis.call('HINCRBY', settled, 'events', 1)
      redis.call('HDEL', applied, aid)
      settled_count = settled_count + 1
    end
  end
end
if last > 0 then redis.call('XTRIM', stream, 'MINID', minid) end
return {last, settled_count, threshold}
