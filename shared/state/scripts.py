"""The Lua scripts that change job data in Redis, each one atomic step.

Every script that moves a job between states also appends the move's `status` event to the
job's stream, so a reader never sees a status without its event (or the reverse), whatever
process dies when. Every script that moves a job into or out of `queued` keeps two indexes
in step, so neither a job's place in line nor an owner's count of queued jobs needs a scan:
{prefix}:queued:{queue} (ZSET, score = order of entering `queued`) and
{prefix}:owner:{owner}:queued (SET). `prefix` is passed as a key, with its colon.

Stream entries have one field, "e": the event as JSON (events.EventStream reads them)."""

from __future__ import annotations

_LIB = """
local function index_queued(prefix, job, on)
  local f = redis.call('HMGET', job, 'id', 'queue', 'owner')
  local id, queue, owner = f[1], f[2] or '', f[3] or ''
  if on then
    redis.call('ZADD', prefix .. 'queued:' .. queue, redis.call('INCR', prefix .. 'queued:seq'), id)
    redis.call('SADD', prefix .. 'owner:' .. owner .. ':queued', id)
  else
    redis.call('ZREM', prefix .. 'queued:' .. queue, id)
    redis.call('SREM', prefix .. 'owner:' .. owner .. ':queued', id)
  end
end

local function finish(job, active, owner_prefix, stats, status)
  redis.call('SREM', active, job)
  local owner = redis.call('HGET', job, 'owner')
  if owner then redis.call('SREM', owner_prefix .. owner .. ':active', job) end
  redis.call('HINCRBY', stats, 'finished:' .. status, 1)
end

local function append_event(stream, maxlen, payload)
  return redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'e', payload)
end
"""

# Create a queued job, with its first status event, unless its owner already has ARGV[3]
# (> 0) queued jobs; push its broker message (ARGV[4], unless empty) onto the broker queue:
# created and enqueued at once. With an Idempotency-Key (ARGV[5] = its TTL > 0): a key
# already recorded answers {'replay', stored} and creates nothing; otherwise the key is
# recorded with the job.
# KEYS: job, all jobs by time, owner's jobs by time, active, owner's active, stats, owner's
# queued, key prefix, broker queue, idempotency key, events.
# ARGV: job id, score, cap, message, idempotency TTL, idempotency record, event, maxlen,
# field, value, ...
CREATE = (
    _LIB
    + """
local idem_ttl = tonumber(ARGV[5])
if idem_ttl > 0 then
  local stored = redis.call('GET', KEYS[10])
  if stored then return {'replay', stored} end
end
local cap = tonumber(ARGV[3])
local queued = redis.call('SCARD', KEYS[7])
if cap > 0 and queued >= cap then return {'full', queued} end
if idem_ttl > 0 then redis.call('SET', KEYS[10], ARGV[6], 'EX', idem_ttl) end
local fields = {}
for i = 9, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[4], KEYS[1])
redis.call('SADD', KEYS[5], KEYS[1])
redis.call('HINCRBY', KEYS[6], 'submitted', 1)
index_queued(KEYS[8], KEYS[1], true)
append_event(KEYS[11], ARGV[8], ARGV[7])
if ARGV[4] ~= '' then redis.call('LPUSH', KEYS[9], ARGV[4]) end
return {'ok', queued}
"""
)

# Move a job to a target status if its current status is an allowed source, optionally only
# while the caller holds the lease (fencing), set fields and append the status event.
# KEYS: job, lease, active set, owner key prefix, stats, key prefix, events.
# ARGV: target, token ('' = unfenced), release ('1'/'0'), terminal ('1'/'0'), event, maxlen,
# n_sources, sources..., field, value, ...
TRANSITION = (
    _LIB
    + """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {'missing', ''} end
if ARGV[2] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[2] then return {'fenced', cur} end
local n = tonumber(ARGV[7])
for i = 8, 7 + n do
  if ARGV[i] == cur then
    local fields = {'status', ARGV[1]}
    for j = 8 + n, #ARGV do fields[#fields + 1] = ARGV[j] end
    redis.call('HSET', KEYS[1], unpack(fields))
    local queued = ARGV[1] == 'queued'
    if (cur == 'queued') ~= queued then index_queued(KEYS[6], KEYS[1], queued) end
    if ARGV[3] == '1' and redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
    if ARGV[4] == '1' then finish(KEYS[1], KEYS[3], KEYS[4], KEYS[5], ARGV[1]) end
    append_event(KEYS[7], ARGV[6], ARGV[5])
    return {'ok', cur}
  end
end
return {'illegal', cur}
"""
)

# Take a job: it must be queued, or running with no live lease (its worker died). Counts the
# attempt; refuses past the budget (attempts that did not end in a graceful requeue). The
# `running` event is a template: its members `"attempt": "@attempt"` and `"fence": "@fence"`
# (json.dumps' separators) become the numbers. A string in the event cannot hold that text:
# JSON escapes its quotes.
# KEYS: job, lease, fence, lease log, key prefix, events.
# ARGV: worker, ttl_ms, max_attempts, now, event, maxlen, terminal...
ACQUIRE = (
    _LIB
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', ''} end
for i = 7, #ARGV do if status == ARGV[i] then return {'finished', status} end end
local holder = redis.call('GET', KEYS[2])
if holder then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', 1000, '*', 'event', 'dropped', 'worker', ARGV[1],
             'holder', holder, 'time', ARGV[4])
  return {'held', holder}
end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
local requeues = tonumber(redis.call('HGET', KEYS[1], 'requeues') or '0')
if attempts - requeues >= tonumber(ARGV[3]) then return {'exhausted', tostring(attempts)} end
local fence = redis.call('INCR', KEYS[3])
local token = fence .. ':' .. ARGV[1]
redis.call('SET', KEYS[2], token, 'PX', ARGV[2])
redis.call('HSET', KEYS[1], 'status', 'running', 'attempts', attempts + 1, 'worker', ARGV[1],
           'fence', fence)
if status == 'queued' then index_queued(KEYS[5], KEYS[1], false) end
if not redis.call('HGET', KEYS[1], 'started_at') then
  redis.call('HSET', KEYS[1], 'started_at', ARGV[4])
end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', 1000, '*', 'event', 'acquired', 'worker', ARGV[1],
           'fence', fence, 'attempt', attempts + 1, 'time', ARGV[4])
local event = string.gsub(ARGV[5], '"attempt": "@attempt"', '"attempt": ' .. (attempts + 1))
event = string.gsub(event, '"fence": "@fence"', '"fence": ' .. fence)
append_event(KEYS[6], ARGV[6], event)
return {'ok', token, tostring(fence), tostring(attempts + 1)}
"""
)

# A running job whose lease expired (its worker died) goes back to the queue.
# KEYS: job, lease, lease log, key prefix, events. ARGV: now, event, maxlen.
RECLAIM = (
    _LIB
    + """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'enqueued_at', ARGV[1])
index_queued(KEYS[4], KEYS[1], true)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', 1000, '*', 'event', 'reclaimed', 'time', ARGV[1])
append_event(KEYS[5], ARGV[3], ARGV[2])
return 1
"""
)

# Settle a job that waited for the planner's probe (shared/planning.py): only while it is
# queued and still waiting on this plan key, so exactly one process settles it. Routed: it
# moves to its class's queue index (its message is sent next). Failed: terminal, as
# TRANSITION does it. KEYS: job, active, owner key prefix, stats, key prefix, events.
# ARGV: plan key, target ('queued' or 'failed'), event, maxlen, field, value, ...
SETTLE_PLANNED = (
    _LIB
    + """
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
if redis.call('HGET', KEYS[1], 'planning') ~= ARGV[1] then return 0 end
index_queued(KEYS[5], KEYS[1], false)
redis.call('HDEL', KEYS[1], 'planning')
local fields = {'status', ARGV[2]}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
if ARGV[2] == 'queued' then
  index_queued(KEYS[5], KEYS[1], true)
else
  finish(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[2])
end
append_event(KEYS[6], ARGV[4], ARGV[3])
return 1
"""
)

# A queued job whose broker message was lost is sent again: note it (a `status` event, the
# status unchanged) and restart its wait, only while it is still queued.
# KEYS: job, events. ARGV: now, event, maxlen.
RESENT = (
    _LIB
    + """
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
redis.call('HSET', KEYS[1], 'enqueued_at', ARGV[1])
append_event(KEYS[2], ARGV[3], ARGV[2])
return 1
"""
)

# KEYS: lease. ARGV: token, ttl_ms.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# Fenced field update. KEYS: job, lease. ARGV: token, field, value, ...
FENCED_HSET = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local fields = {}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
return 1
"""

# Append events and update the job's progress fields only while the caller holds the lease.
# KEYS: stream, lease, job. ARGV: token, maxlen, n_events, payloads..., field, value, ...
FENCED_PUBLISH = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return false end
local n = tonumber(ARGV[3])
local ids = {}
for i = 4, 3 + n do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[i])
end
if #ARGV > 3 + n then
  local fields = {}
  for i = 4 + n, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('HSET', KEYS[3], unpack(fields))
end
return ids
"""
