-- budget.lua: one campaign's budget, two-phase like TigerBeetle's pending transfers
-- (app.ledger.budget.BudgetLedger; DESIGN.md § Billing, budgets). Touches KEYS[1] only, the hash
-- mosaic:budget:{<campaign id>} (one Redis Cluster slot per campaign).
-- ARGV: 1 op (reserve|post|void|state), 2 now_ms, then per op:
--   reserve: 3 auction id, 4 amount, 5 day, 6 expires_at_ms, 7 daily limit or '', 8 total limit or '',
--            9 keep_ms (how long a voided/posted-without-step record is kept past its expiry)
--   post:    3 rho ('' : the ledger consumer's post; '0': the gateway's, without a pacing step), 4 epsilon, 5 mu_max, 6 keep_ms, 7.. auction ids (the
--            ledger consumer posts a whole batch's auctions of one campaign in one call), each either
--            the id alone (spend what is reserved) or "<id>\t<amount>": the charge is captured — the
--            amount is spent and the whole reservation released (a pre-authorisation hold may be
--            larger than the payment: the rest goes back to the budget in the same step)
--   void:    3 auction id, 4 keep_ms
--   state:   3 day
-- Replies: reserve {1|0, reason}; post a list of statuses (one per auction id); void a status; state {spent_today, reserved_today,
--   spent_total, reserved_total, auctions_today, auctions_total, charged_total, mu (string),
--   late_posts, expired_total}.
-- Fields: spent_total, reserved_total, auctions_total, charged_total, mu, late_posts, late_ids (JSON
--   list, the last 64 auction ids posted after their reservation expired or was voided), expired_total,
--   days (JSON list of the kept days), next_due (ms of the next housekeeping), <day>|spent,
--   <day>|reserved, <day>|auctions, <day>|limit and limit_total (the limits of the last reservation), r:<auction id> = JSON {a amount, d day, e expires_at_ms,
--   s held|posted|voided|expired, k drop-at ms once finished}.
-- Amounts are integers kept with HINCRBY (exact int64); the comparisons in Lua use doubles, exact
-- while every value stays below 2**53: budget.py refuses limits and amounts above MAX_SAFE, and a
-- reservation is refused when spent + reserved + amount would pass MAX_SAFE.
-- Everything is validated before the first write: a Lua error does not roll back earlier writes.
local MAX_SAFE = 9007199254740991
local KEEP_EXPIRED_MS = 7 * 86400000
local DAYS_KEPT = 7
local LATE_IDS_KEPT = 64
local key = KEYS[1]
local op, now = ARGV[1], tonumber(ARGV[2])

local function is_uint(s)
  return type(s) == 'string' and #s > 0 and #s <= 16 and (s == '0' or string.match(s, '^[1-9]%d*$') ~= nil)
end
local function int(x) return string.format('%d', x) end  -- never '-0' or an exponent (HINCRBY)
local function err(reason) return redis.error_reply('budget: ' .. reason) end
local function num(field) return tonumber(redis.call('HGET', key, field) or '0') end

-- validation (no write before this block ends) ---------------------------------------------------
if #KEYS ~= 1 then return err('exactly one key') end
if not is_uint(ARGV[2]) then return err('now_ms is not an integer') end
local aid = ARGV[3]
local function check_aid() return type(aid) == 'string' and #aid > 0 and #aid <= 256 end
local function check_day(d) return type(d) == 'string' and string.match(d, '^%d%d%d%d%-%d%d%-%d%d$') ~= nil end
local step, final
if op == 'reserve' then
  if #ARGV ~= 9 or not check_aid() then return err('reserve arguments') end
  if not is_uint(ARGV[4]) or tonumber(ARGV[4]) > MAX_SAFE then return err('amount') end
  if not check_day(ARGV[5]) then return err('day') end
  if not is_uint(ARGV[6]) or not is_uint(ARGV[9]) then return err('expires_at_ms or keep_ms') end
  for i = 7, 8 do
    if ARGV[i] ~= '' and (not is_uint(ARGV[i]) or tonumber(ARGV[i]) > MAX_SAFE) then return err('limit') end
  end
elseif op == 'post' then
  if #ARGV < 7 or not is_uint(ARGV[6]) then return err('post arguments') end
  for i = 7, #ARGV do
    if #ARGV[i] == 0 or #ARGV[i] > 280 then return err('post arguments: auction id') end
    local id, amount = string.match(ARGV[i], '^(.-)\t(.*)$')
    if id and (#id == 0 or #id > 256 or not is_uint(amount) or tonumber(amount) > MAX_SAFE) then
      return err('post arguments: captured amount')
    end
  end
  final = ARGV[3] ~= ''  -- the gateway's post ("0" without a step): nobody posts after it
  if final then
    local rho, eps, mu_max = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
    if not rho or not eps or not mu_max or rho ~= rho or eps ~= eps or mu_max ~= mu_max
      or eps < 0 or mu_max < 0 or eps == math.huge or mu_max == math.huge or rho == math.huge then
      return err('pacing step')
    end
    if rho > 0 then step = {rho, eps, mu_max} end  -- no step when rho <= 0
  end
elseif op == 'void' then
  if #ARGV ~= 4 or not check_aid() or not is_uint(ARGV[4]) then return err('void arguments') end
elseif op == 'state' then
  if #ARGV ~= 3 or not check_day(ARGV[3]) then return err('state arguments') end
else
  return err('unknown op ' .. tostring(op))
end
local t = redis.call('TYPE', key)['ok']
if t ~= 'none' and t ~= 'hash' then return err(key .. ' holds a ' .. t) end

-- helpers ------------------------------------------------------------------------------------------
local days_kept  -- the kept days as a set, read once per call
local function day_has(d)
  if not days_kept then
    days_kept = {}
    for _, x in ipairs(cjson.decode(redis.call('HGET', key, 'days') or '[]')) do days_kept[x] = true end
  end
  return days_kept[d] == true
end
local function add_day(d)  -- a new day joins; the oldest days beyond DAYS_KEPT go (if nothing reserved)
  if day_has(d) then return end
  days_kept = nil
  local days = cjson.decode(redis.call('HGET', key, 'days') or '[]')
  days[#days + 1] = d
  table.sort(days)
  local kept = {}
  for i, x in ipairs(days) do
    if i <= #days - DAYS_KEPT and num(x .. '|reserved') == 0 then
      redis.call('HDEL', key, x .. '|spent', x .. '|reserved', x .. '|auctions', x .. '|limit')
    else
      kept[#kept + 1] = x
    end
  end
  redis.call('HSET', key, 'days', cjson.encode(kept))
end
-- counter changes are summed in `delta` and written by flush() (one HINCRBY per field per call:
-- a post of a batch of auctions costs one write per counter, not one per auction)
local delta, delta_order = {}, {}
local function incr(field, n)
  if not delta[field] then delta[field] = 0; delta_order[#delta_order + 1] = field end
  delta[field] = delta[field] + n
end
local function flush()
  for _, field in ipairs(delta_order) do
    if delta[field] ~= 0 then redis.call('HINCRBY', key, field, int(delta[field])) end
  end
  delta, delta_order = {}, {}
end
local function release(r)  -- reserved -> nothing
  incr('reserved_total', -r.a)
  if day_has(r.d) then incr(r.d .. '|reserved', -r.a) end
end
local function spend(r, from_reserved)  -- (reserved ->) spent; counts the auction
  if from_reserved then release(r) end
  incr('spent_total', r.a)
  incr('auctions_total', 1)
  if r.a > 0 then incr('charged_total', 1) end
  if day_has(r.d) then
    incr(r.d .. '|spent', r.a)
    incr(r.d .. '|auctions', 1)
  end
end
local function pace(z)  -- mu <- clip(mu - eps * (rho - z) / rho, 0, mu_max)
  local mu = num('mu') - step[2] * (step[1] - z) / step[1]
  if mu < 0 then mu = 0 end
  if mu > step[3] then mu = step[3] end
  redis.call('HSET', key, 'mu', string.format('%.17g', mu))
end
local next_due = tonumber(redis.call('HGET', key, 'next_due') or '')
local function due(at)
  local cur = next_due
  if not cur or at < cur then redis.call('HSET', key, 'next_due', int(at)) end
end
-- a record keeps its numbers as strings: cjson would print doubles with 14 significant digits
local function enc(r)
  return cjson.encode({a = string.format('%d', r.a), d = r.d, e = string.format('%d', r.e), s = r.s,
    k = r.k and string.format('%d', r.k) or nil})
end
local function dec(raw)
  local r = cjson.decode(raw)
  r.a, r.e, r.k = tonumber(r.a), tonumber(r.e), r.k and tonumber(r.k)
  return r
end
local function put(id, r) redis.call('HSET', key, 'r:' .. id, enc(r)) end

-- housekeeping: expire held reservations past their expiry, drop finished records past k ------------
if next_due and now >= next_due then
  local all = redis.call('HGETALL', key)
  local soonest
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 2) == 'r:' then
      local r = dec(all[i + 1])
      if r.s == 'held' and r.e <= now then
        release(r)
        redis.call('HINCRBY', key, 'expired_total', 1)
        r.s, r.k = 'expired', r.e + KEEP_EXPIRED_MS
        redis.call('HSET', key, all[i], enc(r))
      end
      if r.s ~= 'held' and r.k <= now then
        redis.call('HDEL', key, all[i])
      else
        local at = r.s == 'held' and r.e or r.k
        if not soonest or at < soonest then soonest = at end
      end
    end
  end
  if soonest then redis.call('HSET', key, 'next_due', int(soonest)) else redis.call('HDEL', key, 'next_due') end
  next_due = soonest
  flush()
end

-- the operations -------------------------------------------------------------------------------------
local function record(id)
  local raw = redis.call('HGET', key, 'r:' .. id)
  return raw and dec(raw)
end

if op == 'state' then
  local d = ARGV[3]
  return {num(d .. '|spent'), num(d .. '|reserved'), num('spent_total'), num('reserved_total'),
    num(d .. '|auctions'), num('auctions_total'), num('charged_total'),
    redis.call('HGET', key, 'mu') or '0', num('late_posts'), num('expired_total')}
end

if op == 'reserve' then
  local r = record(aid)
  -- held or posted: this auction has it already (a rerun); expired: too late. A voided one is made
  -- again: the budget fit releases its accepted reservations when another is refused, and reserves
  -- them again under the same auction id with the amounts of its refit (app.campaigns.spend).
  -- A held one asked for more (the payment came out above its pre-authorisation hold): it grows by the
  -- difference if that fits the limits, in place (same record, same expiry), or stays as it was.
  local amount, d, e = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
  if r and r.s == 'held' and amount > r.a and r.d ~= d then return {0, 'exists:held'} end
  local grow = r and r.s == 'held' and amount > r.a
  if r and r.s ~= 'voided' and not grow then
    return {(r.s == 'held' or r.s == 'posted') and 1 or 0, 'exists:' .. r.s}
  end
  local held = grow and r.a or 0
  if grow then e = r.e end
  if e <= now then return {0, 'expired'} end
  local c = redis.call('HMGET', key, 'spent_total', 'reserved_total', d .. '|spent', d .. '|reserved')
  amount = amount - held  -- what this call adds to the reserved counters
  local used_total = tonumber(c[1] or '0') + tonumber(c[2] or '0') + amount
  if used_total > MAX_SAFE then return {0, 'overflow'} end
  if ARGV[8] ~= '' and used_total > tonumber(ARGV[8]) then return {0, 'total'} end
  if ARGV[7] ~= '' and tonumber(c[3] or '0') + tonumber(c[4] or '0') + amount > tonumber(ARGV[7]) then
    return {0, 'daily'}
  end
  add_day(d)
  -- the limits this reservation was admitted under (reconcile checks spend against them)
  if ARGV[7] ~= '' then redis.call('HSET', key, d .. '|limit', ARGV[7]) end
  if ARGV[8] ~= '' then redis.call('HSET', key, 'limit_total', ARGV[8]) else redis.call('HDEL', key, 'limit_total') end
  redis.call('HINCRBY', key, 'reserved_total', int(amount))
  redis.call('HINCRBY', key, d .. '|reserved', int(amount))
  put(aid, {a = held + amount, d = d, e = e, s = 'held'})
  due(e)
  return {1, grow and 'grown' or 'reserved'}
end

local keep = tonumber(op == 'post' and ARGV[6] or ARGV[#ARGV])
if op == 'void' then
  local r = record(aid)
  if not r then return 'unknown' end
  if r.s ~= 'held' then return r.s end
  release(r)
  flush()
  r.s, r.k = 'voided', math.max(r.e, now) + keep
  put(aid, r)
  due(r.k)
  return 'voided'
end

-- post: each auction id of the call
local function post(item)
  local id, captured = string.match(item, '^(.-)\t(%d+)$')
  if not id then id = item end
  local r = record(id)
  if not r then return 'unknown' end  -- never reserved, or posted and forgotten
  if r.s == 'posted' then  -- posted before by the ledger consumer: the gateway's step now, once
    if not final then return 'already_posted' end
    if step then pace(r.a) end
    redis.call('HDEL', key, 'r:' .. id)
    return step and 'stepped' or 'already_posted'
  end
  local late = r.s == 'expired' or r.s == 'voided'
  if r.s == 'held' then release(r) end  -- the whole hold goes back, then the charge is spent
  if captured then r.a = tonumber(captured) end
  spend(r, false)
  if step then pace(r.a) end
  if late then  -- the reply was shown: counted anyway, and recorded for reconcile
    redis.call('HINCRBY', key, 'late_posts', 1)
    local ids = cjson.decode(redis.call('HGET', key, 'late_ids') or '[]')
    ids[#ids + 1] = id
    if #ids > LATE_IDS_KEPT then table.remove(ids, 1) end
    redis.call('HSET', key, 'late_ids', cjson.encode(ids))
  end
  if final or late then
    redis.call('HDEL', key, 'r:' .. id)
  else  -- kept until the gateway's post brings the pacing step, or until it is dropped
    r.s, r.k = 'posted', math.max(r.e, now) + keep
    put(id, r)
    due(r.k)
  end
  return late and 'late' or 'posted'
end
local out = {}
for i = 7, #ARGV do out[#out + 1] = post(ARGV[i]) end
flush()
return out
