-- frequency.lua: one (campaign, user) frequency cap, two-phase like a budget reservation
-- (app.ledger.frequency.FrequencyLedger; DESIGN.md § Frequency caps). Touches KEYS[1] only, the sorted
-- set mosaic:fcap:{<campaign id>}:<user hash> (the campaign's Redis Cluster slot: its hash tag).
-- Members are auction ids; a score < 0 is a PENDING reservation (score = -expires_at_ms), a score > 0
-- a POSTED (billed) auction (score = posted_at_ms). So one ZCOUNT counts each kind, in O(log n).
-- ARGV: 1 op (reserve|post|void|count), 2 now_ms, then per op:
--   reserve: 3 auction id, 4 max_auctions, 5 window_ms, 6 expires_at_ms, 7 keep_ms
--   post:    3 auction id, 4 keep_ms, 5 the auction's created_at_ms
--   void:    3 auction id
--   count:   3 window_ms
-- keep_ms (window + the longest a reservation may live): how long a posted member is kept, so a post
-- repeated within it (the gateway's and the ledger consumer's, a redelivery) finds it and counts once;
-- a post of an auction created more than keep_ms ago that finds nothing is `stale` (not counted again).
-- Replies: reserve {1|0, posted in window, pending}; post posted|already_posted|late|stale;
--   void voided|posted|unknown; count {posted in window, pending}.
-- Invariant: a reservation is added only while posted-in-window + live pending < max_auctions, in this
-- one script (atomic): so no more than max_auctions auctions are billed per window through reservations.
local key = KEYS[1]
local op, now = ARGV[1], tonumber(ARGV[2])
if #KEYS ~= 1 then return redis.error_reply('fcap: exactly one key') end
if not now or now <= 0 then return redis.error_reply('fcap: now_ms is not a positive integer') end

local function sweep(keep)
  -- expired reservations (their expiry passed) and posted auctions older than keep_ms
  redis.call('ZREMRANGEBYSCORE', key, -now, '(0')
  if keep then redis.call('ZREMRANGEBYSCORE', key, '(0', '(' .. (now - keep)) end
end

local function extend(ms)
  local ttl = redis.call('PTTL', key)
  if ttl < ms then redis.call('PEXPIRE', key, ms) end
end

local function counts(window)
  return redis.call('ZCOUNT', key, '(' .. (now - window), '+inf'), redis.call('ZCOUNT', key, '-inf', '(0')
end

if op == 'reserve' then
  local aid, cap, window = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
  local expires, keep = tonumber(ARGV[6]), tonumber(ARGV[7])
  if not (cap and window and expires and keep) or cap < 1 or window < 1 or keep < window then
    return redis.error_reply('fcap: bad reserve arguments')
  end
  sweep(keep)
  local posted, pending = counts(window)
  if redis.call('ZSCORE', key, aid) then return {1, posted, pending} end  -- held or posted already
  if expires <= now or posted + pending >= cap then return {0, posted, pending} end
  redis.call('ZADD', key, -expires, aid)
  extend(expires - now + keep)
  return {1, posted, pending + 1}
elseif op == 'post' then
  local aid, keep, created = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
  if not (keep and created) or keep < 1 then return redis.error_reply('fcap: bad post arguments') end
  sweep(keep)
  local score = tonumber(redis.call('ZSCORE', key, aid))
  if score and score > 0 then return 'already_posted' end
  local status = 'posted'
  if not score then
    if created < now - keep then return 'stale' end
    status = 'late'  -- expired or voided, yet billed: the reply was shown, it counts
  end
  redis.call('ZADD', key, now, aid)
  extend(keep)
  return status
elseif op == 'void' then
  local score = tonumber(redis.call('ZSCORE', key, ARGV[3]))
  if not score then return 'unknown' end
  if score > 0 then return 'posted' end
  redis.call('ZREM', key, ARGV[3])
  return 'voided'
elseif op == 'count' then
  local window = tonumber(ARGV[3])
  if not window or window < 1 then return redis.error_reply('fcap: bad window') end
  sweep(nil)
  local posted, pending = counts(window)
  return {posted, pending}
end
return redis.error_reply('fcap: unknown op ' .. tostring(op))
