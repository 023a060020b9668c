-- Compare-and-set of an Idempotency-Key (app.ledger.idempotency): write ARGV[2] (EX ARGV[3]) only
-- where KEYS[1] still holds this request's running value ARGV[1], or nothing (the lease lapsed and no
-- one claimed the key since). Reply: 1 written, 0 not (another request owns the key).
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
