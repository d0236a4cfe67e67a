"""Lua scripts run inside Redis by `roomstate.bus.redis.bus`. Kept apart to be read as a whole.

A room's stored state is a hash whose fields are the CRDT registers, each stored as
``"<stamp> <payload>"`` (a stamp never contains a space):

    p:<sid>:i, p:<sid>:l, p:<sid>:u   participant info, location, userData: "<stamp> <json>"
    x:<sid>                           the participant was removed: when (the store's ms)
                                      ("1": by a version that kept removals for good)
    e                                 the session data's epoch (stamp of the latest replace)
    m:<key>                           session data entry "<stamp> v<json>", or tombstone "<stamp> d"
    n                                 how many participants are present (joined, not removed)
    l                                 the id of the last event appended to the room's stream
    c                                 when (ms) this hash was created (or first written by this
                                      version): nothing is forgotten in the first horizon
    g                                 the floor (ms): removals older are forgotten (docs/crdt.md)
    q<, q>, q:<i>                     the removals to forget, oldest first: head, tail, and each
                                      "<ms> x <sid>" or "<ms> d <key>"
    w                                 when (ms) the room's meeting started: there is one (webhooks)
    wd                                when (ms) a session-data.updated was recorded that no
                                      delivery has read the data for yet (webhooks)

Payloads are canonical JSON (sorted keys) made by the node; the scripts never decode them, so no
value is changed by Lua's number handling. Stamps and payloads are compared byte by byte (`lt`):
Lua's `<` on strings follows the server's locale.
"""

from __future__ import annotations

__all__ = ["LT", "PUBLISH", "PUBLISH_MESSAGE", "RENEW_LEASE", "SESSION_DATA_READ", "SNAPSHOT"]

LT = """
local function lt(a, b)  -- byte-wise a < b, whatever the locale
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
"""

_COMMON = (
    LT
    + """
local function split(v)  -- "<stamp> <payload>" -> stamp, payload
  local i = string.find(v, " ", 1, true)
  return string.sub(v, 1, i - 1), string.sub(v, i + 1)
end
"""
)

_FENCE = """
-- Fencing: KEYS[4] is the writer's lease, ARGV[4] the incarnation that wrote the event ("" for
-- a writer that holds no lease, such as a bus used without a node). A write whose incarnation
-- no longer holds its lease (it expired while the node was paused or cut off, and the other
-- nodes may have removed its participants; or the node fenced and took a new one) is refused
-- before anything is stored: the node's own admission check runs before the write is stamped,
-- and a pause can fall between the two.
if ARGV[4] ~= "" and redis.call("GET", KEYS[4]) ~= ARGV[4] then
  return redis.error_reply("FENCED the lease of the writer is not held by incarnation " .. ARGV[4])
end
"""

_APPEND = """
-- Appends the event (ARGV[1]) to the room's stream, then publishes "<id> <previous id> <event>"
-- on its channel. A room with nobody present expires after the grace period (ARGV[3]); with
-- `persist`, one with someone present loses any expiry. Returns the stream id.
local function append(present, prev, persist)
  local log, state = KEYS[1], KEYS[2]
  local id = redis.call("XADD", log, "MAXLEN", "~", ARGV[2], "*", "e", ARGV[1])
  redis.call("HSET", state, "l", id)
  redis.call("SPUBLISH", KEYS[3], id .. " " .. prev .. " " .. ARGV[1])
  if present == 0 then
    redis.call("PEXPIRE", log, ARGV[3])
    redis.call("PEXPIRE", state, ARGV[3])
  elseif persist then
    redis.call("PERSIST", log)
    redis.call("PERSIST", state)
  end
  return id
end
"""

PUBLISH = (
    _COMMON
    + _FENCE
    + _APPEND
    + """
-- KEYS: log stream, state hash, the room's shard channel, the writer's lease, the shard's
-- webhook stream (same slot)
-- ARGV: event bytes, maxlen, grace ms, the writer's incarnation, webhooks ("": off; else "w"
-- and the event's reason), then ops of 4: kind, id, stamp, payload
--   kind i/l/u  register of participant `id`       m  session entry `id` (payload "v<json>")
--   x           remove participant `id`            d  session tombstone `id` (payload "d")
--   e           session epoch                      c  only if participant `id`'s location is
--                                                     `payload` (else nothing is stored)
--   h           the horizon: keep ms in `stamp`, the drift margin ms in `payload`
-- Appends the event to the stream, then publishes "<id> <previous id> <event>" on the channel
-- (the nodes hosting the room check that each message follows the one before).
-- Returns the stream id of the stored event, or false if a `c` condition failed.
local log, state = KEYS[1], KEYS[2]

local function wins(new_stamp, new_payload, old)
  if not old then return true end
  local s, p = split(old)
  if new_stamp ~= s then return lt(s, new_stamp) end
  if new_payload == p then return false end
  if p == "d" then return false end          -- a tombstone beats a value at one stamp
  if new_payload == "d" then return true end
  return lt(p, new_payload)
end

local ops = {}
for i = 6, #ARGV, 4 do
  ops[#ops + 1] = {ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]}
end

-- Webhooks (roomstate.webhooks.events): what this event changed, recorded in the shard's
-- webhook stream in the same step as the change, so an event is recorded exactly when the
-- store took it (one joined per participant however many nodes merge its join, one left per
-- removal). Off (ARGV[5] ""), nothing of this runs.
local hooks = ARGV[5] ~= ""
local why = string.sub(ARGV[5], 2)
local hooked = {}  -- field lists of the events to record, in order
local data_changed = false  -- the session data changed (one session-data.updated at a time)
local function record(present, now)
  local room = string.sub(log, select(2, string.find(log, ":log:", 1, true)) + 1)
  local meeting = redis.call("HGET", state, "w")
  local entries = hooked
  if present > 0 and not meeting then  -- the first participant of a room with no meeting
    meeting = tostring(now)
    redis.call("HSET", state, "w", meeting)
    table.insert(entries, 1, {"k", "s"})
  end
  local emptied = false  -- by this event's removals: the meeting ends unless someone comes
  for _, fields in ipairs(entries) do emptied = emptied or fields[2] == "l" end
  if present == 0 and meeting and emptied then
    entries[#entries + 1] = {"k", "e"}  -- delivered once the room's grace has passed
  end
  -- Coalesced: one waits for delivery at a time; its delivery reads the data then
  if data_changed and redis.call("HSETNX", state, "wd", now) == 1 then
    entries[#entries + 1] = {"k", "d"}
  end
  for _, fields in ipairs(entries) do
    redis.call("XADD", KEYS[5], "MAXLEN", "~", 100000, "*", "r", room, "t", now,
      "m", meeting or "", unpack(fields))
  end
end

for _, op in ipairs(ops) do
  if op[1] == "c" then
    local loc = redis.call("HGET", state, "p:" .. op[2] .. ":l")
    if not loc then return false end
    local _, payload = split(loc)
    if payload ~= op[4] then return false end
  end
end

-- Forgetting removals (docs/crdt.md): the floor trails the store's clock by the horizon, once
-- the hash has lived that long (a store that lost its data has had the replicas merged back).
local keep, margin = 0, 0
for _, op in ipairs(ops) do
  if op[1] == "h" then keep, margin = tonumber(op[3]), tonumber(op[4]) end
end
local meta = redis.call("HMGET", state, "c", "g", "q<", "q>")
local clock = redis.call("TIME")
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local floor = tonumber(meta[2] or "0")
if not meta[1] then
  redis.call("HSET", state, "c", now)
elseif keep > 0 and now - tonumber(meta[1]) >= keep and now - keep >= floor + 1000 then
  floor = now - keep  -- (moved a second at a time: one write of it a second at most)
  redis.call("HSET", state, "g", floor)
end
local below = nil  -- stamps before the floor sort before this
if floor > 0 then below = string.format("%012x", floor) end
local head, tail = tonumber(meta[3] or "0"), tonumber(meta[4] or "0")
local function forget_later(kind, name)
  tail = tail + 1
  redis.call("HSET", state, "q:" .. tail, now .. " " .. kind .. " " .. name)
end

for _, op in ipairs(ops) do
  if op[1] == "x" then
    local sid = op[2]
    if redis.call("HSETNX", state, "x:" .. sid, now) == 1 then
      forget_later("x", sid)
      local info = hooks and redis.call("HGET", state, "p:" .. sid .. ":i")
      if info then info = select(2, split(info)) end  -- (its JSON, without the stamp)
      if redis.call("HDEL", state, "p:" .. sid .. ":i") == 1 then
        redis.call("HINCRBY", state, "n", -1)
        if hooks then hooked[#hooked + 1] = {"k", "l", "s", sid, "i", info or "", "w", why} end
      end
      redis.call("HDEL", state, "p:" .. sid .. ":l", "p:" .. sid .. ":u")
    end
  end
end

for _, op in ipairs(ops) do
  if op[1] == "e" then
    local old = redis.call("HGET", state, "e")
    if (not old) or lt(old, op[3]) then
      redis.call("HSET", state, "e", op[3])
      data_changed = true
      local fields = redis.call("HGETALL", state)
      for j = 1, #fields, 2 do
        local f = fields[j]
        if string.sub(f, 1, 2) == "m:" then
          local s = split(fields[j + 1])
          if lt(s, op[3]) then redis.call("HDEL", state, f) end
        end
      end
    end
  end
end

-- Below the floor, a participant or key not held before this event takes nothing: what a
-- forgotten removal hid (a stale replica merged back, a write that was late). Whether it was
-- held is read before anything is stored, and only for such old ops (usually none).
local held = {}
if below then
  for _, op in ipairs(ops) do
    local kind = op[1]
    if (kind == "i" or kind == "l" or kind == "u") and held[op[2]] == nil
        and lt(op[3], below) then
      local p = "p:" .. op[2]
      local r = redis.call("HMGET", state, p .. ":i", p .. ":l", p .. ":u")
      held[op[2]] = (r[1] or r[2] or r[3]) and true or false
    end
  end
end

local epoch = redis.call("HGET", state, "e")
for _, op in ipairs(ops) do
  local kind = op[1]
  if kind == "i" or kind == "l" or kind == "u" then
    if redis.call("HEXISTS", state, "x:" .. op[2]) == 0
        and (not below or not lt(op[3], below) or held[op[2]]) then
      local field = "p:" .. op[2] .. ":" .. kind
      local old = redis.call("HGET", state, field)
      if wins(op[3], op[4], old) then
        redis.call("HSET", state, field, op[3] .. " " .. op[4])
        if kind == "i" and not old then
          redis.call("HINCRBY", state, "n", 1)
          if hooks then hooked[#hooked + 1] = {"k", "j", "s", op[2], "i", op[4]} end
        end
      end
    end
  elseif kind == "m" or kind == "d" then
    if (not epoch) or not lt(op[3], epoch) then
      local field = "m:" .. op[2]
      local old = redis.call("HGET", state, field)
      if (old or not below or not lt(op[3], below)) and wins(op[3], op[4], old) then
        redis.call("HSET", state, field, op[3] .. " " .. op[4])
        data_changed = true
        if kind == "d" then forget_later("d", op[2]) end
      end
    end
  end
end

-- Forget the oldest removals past the floor: a few per event, so an event costs what it
-- forgets, never a pass over the room; a room's removals are events too, so they keep up.
local first = head
if below then
  for _ = 1, 8 do
    if head >= tail then break end
    local entry = redis.call("HGET", state, "q:" .. (head + 1))
    local sp = string.find(entry, " ", 1, true)
    local since, kind, name = tonumber(string.sub(entry, 1, sp - 1)),
      string.sub(entry, sp + 1, sp + 1), string.sub(entry, sp + 3)
    if kind == "x" then
      if since >= floor - margin then break end
      redis.call("HDEL", state, "x:" .. name)
    else  -- the key's tombstone, if it still is one: forgotten once stamped before the floor
      local field = "m:" .. name
      local v = redis.call("HGET", state, field)
      local stamp, payload = nil, nil
      if v then stamp, payload = split(v) end
      if payload == "d" then
        if lt(stamp, below) then
          redis.call("HDEL", state, field)
        elseif since >= floor - margin then
          break  -- not yet (one written later was queued again: this entry then goes)
        end
      end
    end
    redis.call("HDEL", state, "q:" .. (head + 1))
    head = head + 1
  end
end
if head >= tail and tail > 0 then
  redis.call("HDEL", state, "q<", "q>")  -- empty: numbered from 1 again
elseif tail ~= tonumber(meta[4] or "0") or head ~= first then
  redis.call("HSET", state, "q<", head, "q>", tail)
end

local present = tonumber(redis.call("HGET", state, "n") or "0")
if hooks then record(present, now) end
return append(present, redis.call("HGET", state, "l") or "0-0", true)
"""
)

PUBLISH_MESSAGE = (
    _FENCE
    + _APPEND
    + """
-- PUBLISH for an event that changes no state (an app message): the same keys and arguments
-- with no ops, the same stream, channel, chain of ids and expiry, in 4 calls instead of 8
-- when someone is present (5 and 9 with the lease check of _FENCE). A room's keys have an
-- expiry exactly when its last PUBLISH found nobody present (only these two scripts write
-- them, and nothing else may set an expiry on them), and an event without ops changes
-- nobody's presence: so when someone is present the keys are already persistent, and when
-- nobody is (a REST message to an empty or unknown room) the expiry is set as PUBLISH sets it.
-- Measured in docs/performance.md.
local n_and_last = redis.call("HMGET", KEYS[2], "n", "l")
return append(tonumber(n_and_last[1] or "0"), n_and_last[2] or "0-0", false)
"""
)

SNAPSHOT = """
-- KEYS: log stream, state hash, the shard's epoch key. ARGV: a fresh epoch, used if the shard
-- has none. Returns {state fields and values..., last stream id, the shard's epoch}, read
-- together so the state includes exactly the events up to that id.
local last = redis.call("XREVRANGE", KEYS[1], "+", "-", "COUNT", 1)
local id = "0-0"
if #last > 0 then id = last[1][1] end
redis.call("SET", KEYS[3], ARGV[1], "NX")
return {redis.call("HGETALL", KEYS[2]), id, redis.call("GET", KEYS[3])}
"""

RENEW_LEASE = """
-- KEYS: lease key. ARGV: incarnation, ttl ms, "register" or "renew".
-- Registering sets the lease; renewing extends it only if it is still ours.
-- Returns 1: the lease is ours; 0: another incarnation holds it; -1: there is no lease (it
-- expired, or Redis lost its data: the node tells which by when it last renewed).
local current = redis.call("GET", KEYS[1])
if ARGV[3] == "register" or current == ARGV[1] then
  redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
  return 1
end
if current then return 0 end
return -1
"""


SESSION_DATA_READ = """
-- KEYS: state hash. The session data's entries ("m:<key>" fields and values), read for a
-- session-data.updated delivery, in one step with clearing "wd": a change stored after this
-- records a new session-data.updated.
redis.call("HDEL", KEYS[1], "wd")
local fields = redis.call("HGETALL", KEYS[1])
local entries = {}
for j = 1, #fields, 2 do
  if string.sub(fields[j], 1, 2) == "m:" then
    entries[#entries + 1] = fields[j]
    entries[#entries + 1] = fields[j + 1]
  end
end
return entries
"""
