-- Give an Idempotency-Key back (app.ledger.idempotency): DEL KEYS[1] only if it still holds this
-- request's running value ARGV[1]. Reply: 1 deleted, 0 not.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
