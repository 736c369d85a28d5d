"""The Lua scripts of the ``redis`` backend: each is one atomic step in Redis.

Keys (``K`` = ``storage.key_prefix`` + ``{sp}:``; the hash tag puts every key of a gateway in one
Redis Cluster slot, since one script touches a channel's keys and a client key's keys together):

    K u:<channel>:d:<YYYY-MM-DD>   hash tokens, prompt, completion, requests, cost   (expires 2 days)
    K u:<channel>:h:<YYYY-MM-DDTHH> the same for the hour                            (expires 3 h)
    K u:<channel>:t                 the same, running totals                          (no expiry)
    K r:<channel>                   zset of reservations: member "<id>:<tokens>", score = expiry ms
    K rs:<channel>                  hash t (tokens), r (requests): the live reservations' sums,
                                    i.e. the channel's in-flight count (``r``) with expiry
    K cb:<channel>                  hash until (ms: open until), trial, texp: the shared breaker
    K cf:<channel>                  consecutive failures while closed
    K cd:<channel>                  429 cool-down, expires when it ends
    K q:<channel>                   hash: the line of requests waiting for a slot (max_concurrency),
                                    one field per process: "<its first waiter's arrival ms>:<the
                                    field's expiry ms>" (kept fresh while it waits, so a dead
                                    process's place is gone within ``LINE_TTL_MS``)
    K kb:<key name>                 the key's request bucket: hash l (level), s (stamp ms)
    K kt:<key name>                 its tokens-per-minute bucket
    K kd:<key name>:<YYYY-MM-DD>    its spend (USD) that day

Time is Redis ``TIME`` (milliseconds) everywhere, never a host clock. Decrements are written
``0 - x``, never ``-x``: for x = 0 Lua makes -0, which reaches Redis as "-0", and HINCRBY refuses
that as "not an integer" (a reservation of 0 tokens: the unmetered GET/DELETE /v1/responses/{id}). Reservations expire by
themselves: every admit first drops the channel's expired members from ``r`` and their sums from
``rs``, so a process killed while holding reservations frees them within their expiry.
"""

from __future__ import annotations

LINE_TTL_MS = 1000  # a process's place in a channel's line lasts this long unless renewed

# Shared prologue: now in ms from Redis' own clock.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# A token bucket read at `now` (refilled, clamped to the capacity).
_BUCKET = """
local function bucket(key, cap, rate)
  local b = redis.call('HMGET', key, 'l', 's')
  local level = tonumber(b[1]) or cap
  local stamp = tonumber(b[2]) or now
  if now > stamp then level = level + (now - stamp) * rate end
  if level > cap then level = cap end
  return level
end
local function keep(key, level, cap, rate)
  redis.call('HSET', key, 'l', level, 's', now)
  redis.call('PEXPIRE', key, math.ceil((cap - level) / rate) + 1000)
end
"""

# One call admits a batch (the admits of one event-loop turn), in order. For admit i,
# KEYS[10i+1..10i+10] and ARGV[16i+1..16i+16]; the result is a list of one result per admit.
# KEYS: 1 ud, 2 uh, 3 r, 4 rs, 5 cb, 6 cd, 7 kb, 8 kt, 9 kd, 10 q
# ARGV: 1 reservation id, 2 tokens, 3 day limit, 4 hour limit, 5 request limit, 6 ttl ms,
#       7 check the key (0/1), 8 rpm, 9 burst, 10 tpm, 11 tokens for tpm, 12 budget (USD),
#       13 max concurrency (0: none; compared with the live reservations' count ``rs.r``),
#       14 the process (its field in ``q``), 15 ms the process's first waiter for the channel
#       has waited (-1: the request is not waiting, a newcomer), 16 the ms each of its next
#       waiters has waited, oldest first, comma-separated (up to 15; "": none)
# Max concurrency is first come first served across processes: a slot goes to a request only
# when the requests waiting in other processes that came before it leave one free (a newcomer
# is behind them all). A process's place in the line (``q``, field: the process, value:
# "expiry:arrival,arrival,...") lists its waiters' arrival times; a waiter refused takes or
# renews it; one admitted leaves the rest (or gives the place up). A channel nobody waits for
# costs one HGETALL of an absent key.
# Returns {code, trial, day tokens, hour tokens, day requests, held tokens, held requests,
#          req remaining, req limit, req reset ms, tok remaining, tok limit, tok reset ms,
#          retry/remaining ms, spent (string)}
# code: 0 reserved, 1 quota used, 2 circuit open, 3 half-open trial in flight, 4 cooling down,
#       5 at max concurrency, 10 key requests/minute, 11 key tokens/minute, 12 key daily budget
ADMIT = (
    _NOW
    + _BUCKET
    + f"local LINE_TTL = {LINE_TTL_MS}\n"
    + """
local function admit(K, A)
  local rq = {0, 0, 0}
  local tk = {0, 0, 0}
  if A[7] == '1' then
    local rpm = tonumber(A[8])
    if rpm > 0 then
      local cap = tonumber(A[9])
      local rate = rpm / 60000
      local level = bucket(K[7], cap, rate)
      if level < 1 then
        return {10, 0, 0, 0, 0, 0, 0, math.floor(level), cap, math.ceil((cap - level) / rate),
                0, 0, 0, math.ceil((1 - level) / rate), '0'}
      end
      level = level - 1
      keep(K[7], level, cap, rate)
      rq = {math.floor(level), cap, math.ceil((cap - level) / rate)}
    end
    local budget = tonumber(A[12])
    if budget > 0 then
      local spent = tonumber(redis.call('GET', K[9]) or '0')
      if spent >= budget then
        return {12, 0, 0, 0, 0, 0, 0, rq[1], rq[2], rq[3], 0, 0, 0, 0, tostring(spent)}
      end
    end
    local tpm = tonumber(A[10])
    if tpm > 0 then
      local rate = tpm / 60000
      local level = bucket(K[8], tpm, rate)
      local needed = math.min(tonumber(A[11]), tpm)
      tk = {math.max(0, math.floor(level)), tpm, math.ceil((tpm - level) / rate)}
      if level < needed then
        return {11, 0, 0, 0, 0, 0, 0, rq[1], rq[2], rq[3], tk[1], tk[2], tk[3],
                math.ceil((needed - level) / rate), '0'}
      end
    end
  end
  local trial = 0
  local cb = redis.call('HMGET', K[5], 'until', 'trial', 'texp')
  if cb[1] then
    local untl = tonumber(cb[1])
    if now < untl then
      return {2, 0, 0, 0, 0, 0, 0, rq[1], rq[2], rq[3], tk[1], tk[2], tk[3], untl - now, '0'}
    end
    if cb[2] and (tonumber(cb[3]) or 0) > now then
      return {3, 0, 0, 0, 0, 0, 0, rq[1], rq[2], rq[3], tk[1], tk[2], tk[3], 0, '0'}
    end
    trial = 1
  end
  local cool = redis.call('PTTL', K[6])
  if cool > 0 then
    return {4, 0, 0, 0, 0, 0, 0, rq[1], rq[2], rq[3], tk[1], tk[2], tk[3], cool, '0'}
  end
  local old = redis.call('ZRANGEBYSCORE', K[3], '-inf', now)
  if #old > 0 then
    local freed = 0
    for _, m in ipairs(old) do freed = freed + tonumber(string.match(m, ':(%d+)$')) end
    redis.call('ZREMRANGEBYSCORE', K[3], '-inf', now)
    redis.call('HINCRBY', K[4], 't', 0 - freed)
    redis.call('HINCRBY', K[4], 'r', -#old)
  end
  local held = redis.call('HMGET', K[4], 't', 'r')
  local ht = tonumber(held[1]) or 0
  local hr = tonumber(held[2]) or 0
  local d = redis.call('HMGET', K[1], 'tokens', 'requests')
  local dt = tonumber(d[1]) or 0
  local dr = tonumber(d[2]) or 0
  local hh = tonumber(redis.call('HGET', K[2], 'tokens') or '0')
  local mc = tonumber(A[13]) or 0
  local waited = tonumber(A[15])
  if mc > 0 then
    local mine = now - waited
    local ahead = 0
    local line = redis.call('HGETALL', K[10])
    for j = 1, #line, 2 do
      local who = line[j]
      local til, ats = string.match(line[j + 1], '^(%d+):(.*)$')
      if not til or tonumber(til) <= now then
        redis.call('HDEL', K[10], who)
      elseif who ~= A[14] then
        for at in string.gmatch(ats, '%-?%d+') do
          at = tonumber(at)
          if waited < 0 or at < mine or (at == mine and who < A[14]) then ahead = ahead + 1 end
        end
      end
    end
    if hr + ahead >= mc then
      if waited >= 0 then
        local ats = {tostring(mine)}
        for w in string.gmatch(A[16], '%d+') do ats[#ats + 1] = tostring(now - tonumber(w)) end
        redis.call('HSET', K[10], A[14], (now + LINE_TTL) .. ':' .. table.concat(ats, ','))
        redis.call('PEXPIRE', K[10], LINE_TTL + 1000)
      end
      return {5, 0, dt, hh, dr, ht, hr, rq[1], rq[2], rq[3], tk[1], tk[2], tk[3], 0, '0'}
    end
  end
  local dl, hl, rl = tonumber(A[3]), tonumber(A[4]), tonumber(A[5])
  if (dl > 0 and dt + ht >= dl) or (hl > 0 and hh + ht >= hl) or (rl > 0 and dr + hr >= rl) then
    return {1, 0, dt, hh, dr, ht, hr, rq[1], rq[2], rq[3], tk[1], tk[2], tk[3], 0, '0'}
  end
  local tokens = tonumber(A[2])
  local ttl = tonumber(A[6])
  redis.call('ZADD', K[3], now + ttl, A[1] .. ':' .. tokens)
  redis.call('HINCRBY', K[4], 't', tokens)
  redis.call('HINCRBY', K[4], 'r', 1)
  redis.call('PEXPIRE', K[3], ttl + 60000)
  redis.call('PEXPIRE', K[4], ttl + 60000)
  if trial == 1 then
    redis.call('HSET', K[5], 'trial', A[1] .. ':' .. tokens, 'texp', now + ttl)
  end
  if waited >= 0 then
    local ats = {}
    for w in string.gmatch(A[16], '%d+') do ats[#ats + 1] = tostring(now - tonumber(w)) end
    if #ats > 0 then
      redis.call('HSET', K[10], A[14], (now + LINE_TTL) .. ':' .. table.concat(ats, ','))
      redis.call('PEXPIRE', K[10], LINE_TTL + 1000)
    else
      redis.call('HDEL', K[10], A[14])
    end
  end
  return {0, trial, dt, hh, dr, ht + tokens, hr + 1, rq[1], rq[2], rq[3], tk[1], tk[2], tk[3], 0,
          '0'}
end
local out = {}
for i = 0, #KEYS / 10 - 1 do
  local K, A = {}, {}
  for j = 1, 10 do K[j] = KEYS[i * 10 + j] end
  for j = 1, 16 do A[j] = ARGV[i * 16 + j] end
  out[i + 1] = admit(K, A)
end
return out
"""
)

SETTLE_KEYS = 10  # per settlement: ud uh ut r rs cb cf cd kt kd
SETTLE_ARGS = 12
# One call settles a batch. For settlement i, KEYS[10i+1..10i+10] and ARGV[12i+1..12i+12]:
# ARGV: member ("" = none), count (1 = count usage, 0 = release only), prompt, completion, cost,
#       outcome (s success, f failure, c 429 cool-down, n none, "" nothing), cool-down ms,
#       fail_max, reset ms, tpm, seq, 0
# and one last KEY, the writing process's mark (``sw:<instance>``): the highest ``seq`` (> 0) it
# has counted. A settlement whose usage was counted already (its batch ran, but the answer was
# lost to a timeout or a dropped connection, so the process kept it for the write-back) is not
# counted again: a process numbers its settlements in the order it sends them.
# Returns per settlement {released 0/1, event (0 none, 1 opened, 2 closed), open ms, and then the
# channel's day tokens, hour tokens, day requests, held tokens, held requests (the routing view)}.
SETTLE = (
    _NOW
    + _BUCKET
    + """
local out = {}
local n = #ARGV / 12
local mark_key = KEYS[n * 10 + 1]
local mark = tonumber(redis.call('GET', mark_key) or '0')
local marked = mark
for i = 0, n - 1 do
  local k, a = i * 10, i * 12
  local member = ARGV[a + 1]
  local released = 0
  local count = ARGV[a + 2] == '1'
  local seq = tonumber(ARGV[a + 11])
  if count and seq > 0 then
    if seq <= mark then count = false else mark = seq end
  end
  if member ~= '' then
    if redis.call('ZREM', KEYS[k + 4], member) == 1 then
      released = 1
      redis.call('HINCRBY', KEYS[k + 5], 't', 0 - tonumber(string.match(member, ':(%d+)$')))
      redis.call('HINCRBY', KEYS[k + 5], 'r', -1)
    end
  end
  if count then
    local p, c, cost = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
    for j = 1, 3 do
      local key = KEYS[k + j]
      redis.call('HINCRBY', key, 'tokens', p + c)
      redis.call('HINCRBY', key, 'prompt', p)
      redis.call('HINCRBY', key, 'completion', c)
      redis.call('HINCRBY', key, 'requests', 1)
      if cost ~= 0 then redis.call('HINCRBYFLOAT', key, 'cost', ARGV[a + 5]) end
    end
    redis.call('PEXPIRE', KEYS[k + 1], 172800000)
    redis.call('PEXPIRE', KEYS[k + 2], 10800000)
    local tpm = tonumber(ARGV[a + 10])
    if tpm > 0 then
      local rate = tpm / 60000
      local level = bucket(KEYS[k + 9], tpm, rate) - (p + c)
      keep(KEYS[k + 9], level, tpm, rate)
    end
    if cost > 0 then
      redis.call('INCRBYFLOAT', KEYS[k + 10], ARGV[a + 5])
      redis.call('PEXPIRE', KEYS[k + 10], 172800000)
    end
  end
  local event, open_ms = 0, 0
  local outcome = ARGV[a + 6]
  if outcome ~= '' then
    local cbk = KEYS[k + 6]
    local cb = redis.call('HMGET', cbk, 'until', 'trial')
    local is_trial = member ~= '' and cb[2] == member
    local reset = tonumber(ARGV[a + 9])
    if outcome == 's' then
      if is_trial then
        redis.call('DEL', cbk, KEYS[k + 7])
        event = 2
      elseif not cb[1] then
        redis.call('DEL', KEYS[k + 7])
      end
    elseif outcome == 'f' then
      if is_trial then
        redis.call('HSET', cbk, 'until', now + reset)
        redis.call('HDEL', cbk, 'trial', 'texp')
        event, open_ms = 1, reset
      elseif not cb[1] then
        local fails = redis.call('INCR', KEYS[k + 7])
        redis.call('PEXPIRE', KEYS[k + 7], 86400000)
        if fails >= tonumber(ARGV[a + 8]) then
          redis.call('HSET', cbk, 'until', now + reset)
          redis.call('PEXPIRE', cbk, reset + 86400000)
          redis.call('DEL', KEYS[k + 7])
          event, open_ms = 1, reset
        end
      end
    else
      if outcome == 'c' then
        local ms = tonumber(ARGV[a + 7])
        if ms > 0 and redis.call('PTTL', KEYS[k + 8]) < ms then
          redis.call('SET', KEYS[k + 8], '1', 'PX', ms)
        end
      end
      if is_trial then redis.call('HDEL', cbk, 'trial', 'texp') end
    end
  end
  local d = redis.call('HMGET', KEYS[k + 1], 'tokens', 'requests')
  local held = redis.call('HMGET', KEYS[k + 5], 't', 'r')
  out[i + 1] = {released, event, open_ms, tonumber(d[1]) or 0,
                tonumber(redis.call('HGET', KEYS[k + 2], 'tokens') or '0'), tonumber(d[2]) or 0,
                tonumber(held[1]) or 0, tonumber(held[2]) or 0}
end
if mark ~= marked then redis.call('SET', mark_key, mark, 'PX', 172800000) end
return out
"""
)

# KEYS per channel (6): ud uh rs cb cd r. Drops expired reservations (like ADMIT), then returns
# per channel {day tokens, hour tokens, day requests, held tokens, held requests,
#              breaker (-1 closed, 0 due for its trial, >0 open ms left), cool-down ms}:
# the view the router uses between admits.
POLL = (
    _NOW
    + """
local out = {}
for i = 0, #KEYS / 6 - 1 do
  local k = i * 6
  local old = redis.call('ZRANGEBYSCORE', KEYS[k + 6], '-inf', now)
  if #old > 0 then
    local freed = 0
    for _, m in ipairs(old) do freed = freed + tonumber(string.match(m, ':(%d+)$')) end
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 6], '-inf', now)
    redis.call('HINCRBY', KEYS[k + 3], 't', 0 - freed)
    redis.call('HINCRBY', KEYS[k + 3], 'r', -#old)
  end
  local d = redis.call('HMGET', KEYS[k + 1], 'tokens', 'requests')
  local held = redis.call('HMGET', KEYS[k + 3], 't', 'r')
  local untl = redis.call('HGET', KEYS[k + 4], 'until')
  local breaker = -1
  if untl then breaker = math.max(0, tonumber(untl) - now) end
  out[i + 1] = {tonumber(d[1]) or 0, tonumber(redis.call('HGET', KEYS[k + 2], 'tokens') or '0'),
                tonumber(d[2]) or 0, tonumber(held[1]) or 0, tonumber(held[2]) or 0, breaker,
                math.max(0, redis.call('PTTL', KEYS[k + 5]))}
end
return out
"""
)

# A request that outlives its attempt's timeout (a long stream: its timeout bounds silence, not
# length) keeps its reservation: its process pushes the expiry on before it passes. KEYS per
# reservation (3): r rs cb; ARGV per reservation (2): member, ttl ms. A member already gone
# (expired, or settled meanwhile) is not brought back. Returns 1 per member renewed, else 0.
RENEW = (
    _NOW
    + """
local out = {}
for i = 0, #KEYS / 3 - 1 do
  local k, a = i * 3, i * 2
  local member, ttl = ARGV[a + 1], tonumber(ARGV[a + 2])
  local renewed = 0
  if redis.call('ZSCORE', KEYS[k + 1], member) then
    redis.call('ZADD', KEYS[k + 1], now + ttl, member)
    redis.call('PEXPIRE', KEYS[k + 1], ttl + 60000)
    redis.call('PEXPIRE', KEYS[k + 2], ttl + 60000)
    if redis.call('HGET', KEYS[k + 3], 'trial') == member then
      redis.call('HSET', KEYS[k + 3], 'texp', now + ttl)
    end
    renewed = 1
  end
  out[i + 1] = renewed
end
return out
"""
)
