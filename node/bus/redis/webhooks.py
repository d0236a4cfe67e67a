"""The webhook queue on Redis: a consumer group, shared by every node, on each shard's webhook
stream (keys.py), which the PUBLISH script appends to as it stores a change (scripts.py).

One consumer at a time reads a shard: the holder of the shard's reader lease (a key with a TTL,
renewed by its node; taken, once free, by the node that rendezvous hashing over the live nodes
prefers). Each read, touch and claim checks the lease in the same script, so a node that lost
it (paused, cut off) can neither take new events nor keep old ones. What a reader was handed
stays pending under it until XACK. A new holder takes over (XAUTOCLAIM, in stream order) what is
pending under others only once all of it has been idle for the claim timeout, and reads new
events only then. Dead letters go to the shard's dead-letter stream in the same script that
acknowledges them.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from roomstate.bus.redis.connections import REDIS_ERRORS, Connections
from roomstate.bus.redis.keys import (
    SHARDS,
    state_key,
    webhook_dead_key,
    webhook_key,
    webhook_lease_key,
    webhook_nodes_key,
)
from roomstate.bus.redis.scripts import LT, SESSION_DATA_READ
from roomstate.errors import BusError
from roomstate.webhooks.events import Recorded
from roomstate.webhooks.queue import DEAD_LETTERS_KEPT, DeadLetter, WebhookQueue

__all__ = ["GROUP", "RedisWebhookQueue"]

log = logging.getLogger(__name__)

GROUP = "webhooks"  # the consumer group every node reads the webhook streams in

# KEYS: the webhook stream, its dead letters. ARGV: group, position, error, kept, fields...
# Moves the event to the dead letters only if it is still pending (not acknowledged meanwhile
# by a node that took it over), in one step with its acknowledgement.
_DEAD_LETTER = """
if redis.call("XACK", KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call("XADD", KEYS[2], "MAXLEN", "~", ARGV[4], "*", "x", ARGV[3], "p", ARGV[2],
  unpack(ARGV, 5))
return 1
"""

# KEYS: the dead letters, the webhook stream. ARGV: the dead letter's position.
# Records the event again (with "o", its first position, kept) and removes the dead letter.
_REPLAY = """
local found = redis.call("XRANGE", KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then return 0 end
local f = found[1][2]
local fields, first = {}, nil
for i = 1, #f, 2 do
  if f[i] == "p" then first = first or f[i + 1]
  elseif f[i] == "o" then first = f[i + 1]
  elseif f[i] ~= "x" then fields[#fields + 1] = f[i]; fields[#fields + 1] = f[i + 1] end
end
redis.call("XADD", KEYS[2], "*", "o", first, unpack(fields))
redis.call("XDEL", KEYS[1], ARGV[1])
return 1
"""

# KEYS: the shard's reader lease, its live deliverers (sorted set: member -> until when, ms).
# ARGV: member (a node incarnation), consumer (its name for this tenure of the lease), ttl ms.
# Notes the member as live, then renews the lease if the consumer holds it, or takes it if it
# is free and the member is the preferred one: the highest sha1 of member .. lease key
# (rendezvous hashing, as webhooks.queue.preferred). Returns {held, preferred} (1 or 0 each).
_HOLD = (
    LT
    + """
local member, consumer, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local clock = redis.call("TIME")
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call("ZREMRANGEBYSCORE", KEYS[2], "-inf", now)
redis.call("ZADD", KEYS[2], now + ttl, member)
redis.call("PEXPIRE", KEYS[2], ttl)
local best, first = nil, nil
for _, m in ipairs(redis.call("ZRANGE", KEYS[2], 0, -1)) do
  local h = redis.sha1hex(m .. KEYS[1])
  if best == nil or lt(best, h) then best, first = h, m end
end
local mine = (first == member) and 1 or 0
local holder = redis.call("GET", KEYS[1])
if holder == consumer or (not holder and mine == 1) then
  redis.call("SET", KEYS[1], consumer, "PX", ttl)
  return {1, mine}
end
return {0, mine}
"""
)

# KEYS: webhook stream, lease, live deliverers. ARGV: group, member, consumer, idle ms, leaving.
# Gives the lease up if the consumer holds it, with its pending entries marked idle for the
# claim timeout (XCLAIM ... IDLE): the next holder takes them at once.
_RELEASE = """
if ARGV[3] ~= "" and redis.call("GET", KEYS[2]) == ARGV[3] then
  local ids = {}
  for _, e in ipairs(redis.call("XPENDING", KEYS[1], ARGV[1], "-", "+", 10000, ARGV[3])) do
    ids[#ids + 1] = e[1]
  end
  for i = 1, #ids, 100 do
    local args = {"XCLAIM", KEYS[1], ARGV[1], ARGV[3], 0}
    for j = i, math.min(i + 99, #ids) do args[#args + 1] = ids[j] end
    args[#args + 1] = "IDLE"; args[#args + 1] = ARGV[4]; args[#args + 1] = "JUSTID"
    redis.call(unpack(args))
  end
  redis.call("DEL", KEYS[2])
end
if ARGV[5] ~= "" then redis.call("ZREM", KEYS[3], ARGV[2]) end
return 1
"""

# KEYS: webhook stream, lease. ARGV: group, consumer, count. New entries, if the consumer holds
# the lease (else none).
_READ = """
if redis.call("GET", KEYS[2]) ~= ARGV[2] then return {} end
local reply = redis.call("XREADGROUP", "GROUP", ARGV[1], ARGV[2], "COUNT", ARGV[3],
  "STREAMS", KEYS[1], ">")
if not reply then return {} end
return reply[1][2]
"""

# KEYS: webhook stream, lease. ARGV: group, consumer, idle ms, count.
# Returns false if the consumer does not hold the lease; else {caught up (1: nothing pending
# under another consumer), the entries taken...}. Nothing is taken while an entry pending under
# another consumer is idle for less than the claim timeout: its node may still be sending it,
# and taking the idle ones first could send a room's later event before its earlier one.
_CLAIM = """
local me, idle, want = ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call("GET", KEYS[2]) ~= me then return false end
local function others()
  local summary, n = redis.call("XPENDING", KEYS[1], ARGV[1]), 0
  for _, c in ipairs(summary[4] or {}) do
    if c[1] ~= me then n = n + tonumber(c[2]) end
  end
  return n, summary[1]
end
local waiting, total = others()
if waiting > 0 then
  local ready = 0
  for _, e in ipairs(redis.call("XPENDING", KEYS[1], ARGV[1], "IDLE", idle, "-", "+", total)) do
    if e[2] ~= me then ready = ready + 1 end
  end
  if ready < waiting then return {0} end
end
local taken, cursor = {0}, "0-0"
repeat  -- in stream order (XAUTOCLAIM walks the pending list by id)
  local reply = redis.call("XAUTOCLAIM", KEYS[1], ARGV[1], me, idle, cursor,
    "COUNT", want - (#taken - 1))
  cursor = reply[1]
  for _, e in ipairs(reply[2]) do taken[#taken + 1] = e end
until cursor == "0-0" or #taken - 1 >= want
if others() == 0 then taken[1] = 1 end
return taken
"""

# KEYS: webhook stream, lease. ARGV: group, consumer, positions... (if it holds the lease)
_TOUCH = """
if redis.call("GET", KEYS[2]) ~= ARGV[2] then return 0 end
local args = {"XCLAIM", KEYS[1], ARGV[1], ARGV[2], 0}
for i = 3, #ARGV do args[#args + 1] = ARGV[i] end
args[#args + 1] = "JUSTID"
redis.call(unpack(args))
return 1
"""

# KEYS: webhook stream, lease. ARGV: group, consumer, idle ms. Deletes the consumers other than
# this one with nothing pending, idle that long (if the consumer holds the lease).
_FORGET = """
if redis.call("GET", KEYS[2]) ~= ARGV[2] then return 0 end
local gone = 0
for _, c in ipairs(redis.call("XINFO", "CONSUMERS", KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f.name ~= ARGV[2] and f.pending == 0 and f.idle >= tonumber(ARGV[3]) then
    redis.call("XGROUP", "DELCONSUMER", KEYS[1], ARGV[1], f.name)
    gone = gone + 1
  end
end
return gone
"""


def _text(fields: dict[Any, Any]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in fields.items()}


def _pairs(flat: list[bytes]) -> dict[str, str]:
    """An entry's fields as a script returns them (a flat list)."""
    return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}


class RedisWebhookQueue(WebhookQueue):
    shards = SHARDS

    def __init__(self, conns: Connections) -> None:
        self._client = conns.client
        self._grouped: set[int] = set()  # shards whose group this node has made sure of
        self._dead_letter = self._client.register_script(_DEAD_LETTER)
        self._replay = self._client.register_script(_REPLAY)
        self._session_data = self._client.register_script(SESSION_DATA_READ)
        self._hold = self._client.register_script(_HOLD)
        self._release = self._client.register_script(_RELEASE)
        self._read = self._client.register_script(_READ)
        self._claim = self._client.register_script(_CLAIM)
        self._touch = self._client.register_script(_TOUCH)
        self._forget = self._client.register_script(_FORGET)

    async def _group(self, shard: int) -> None:
        if shard in self._grouped:
            return
        try:  # from the stream's start: events recorded before any node read them count
            await self._client.xgroup_create(webhook_key(shard), GROUP, id="0", mkstream=True)
        except REDIS_ERRORS as exc:
            if "BUSYGROUP" not in str(exc):
                raise BusError(f"cannot make the webhook consumer group: {exc}") from exc
        self._grouped.add(shard)

    def _keys(self, shard: int) -> list[str]:
        return [webhook_key(shard), webhook_lease_key(shard)]

    async def hold(self, shard: int, member: str, consumer: str, ttl_ms: int) -> tuple[bool, bool]:
        try:
            await self._group(shard)  # (the other scripts need it)
            keys = [webhook_lease_key(shard), webhook_nodes_key(shard)]
            held, first = await self._hold(keys=keys, args=[member, consumer, ttl_ms])
        except REDIS_ERRORS as exc:
            raise BusError(f"cannot hold a webhook reader lease: {exc}") from exc
        return bool(held), bool(first)

    async def release(
        self, shard: int, member: str, consumer: str, idle_ms: int, leaving: bool
    ) -> None:
        keys = [*self._keys(shard), webhook_nodes_key(shard)]
        args: list[str | int] = [GROUP, member, consumer, idle_ms, "1" if leaving else ""]
        try:
            await self._release(keys=keys, args=args)
        except REDIS_ERRORS as exc:
            raise BusError(f"cannot release a webhook reader lease: {exc}") from exc

    async def read(self, shard: int, consumer: str, count: int) -> list[Recorded]:
        try:
            await self._group(shard)
            reply: Any = await self._read(keys=self._keys(shard), args=[GROUP, consumer, count])
        except REDIS_ERRORS as exc:
            if "NOGROUP" in str(exc):  # Redis lost the stream: make the group again
                self._grouped.discard(shard)
            raise BusError(f"cannot read webhook events: {exc}") from exc
        return [Recorded(shard, p.decode(), _pairs(f)) for p, f in reply if f]

    async def claim(
        self, shard: int, consumer: str, idle_ms: int, count: int
    ) -> tuple[list[Recorded], bool]:
        try:
            await self._group(shard)
            reply: Any = await self._claim(
                keys=self._keys(shard), args=[GROUP, consumer, idle_ms, count]
            )
        except REDIS_ERRORS as exc:
            if "NOGROUP" in str(exc):
                self._grouped.discard(shard)
            raise BusError(f"cannot take over webhook events: {exc}") from exc
        if not reply:
            return [], False
        taken = [Recorded(shard, p.decode(), _pairs(f)) for p, f in reply[1:] if f]
        return taken, reply[0] == 1

    async def touch(self, shard: int, consumer: str, positions: list[str]) -> None:
        if not positions:
            return
        try:
            await self._touch(keys=self._keys(shard), args=[GROUP, consumer, *positions])
        except REDIS_ERRORS as exc:
            raise BusError(f"cannot keep webhook events claimed: {exc}") from exc

    async def forget_consumers(self, shard: int, consumer: str, idle_ms: int) -> int:
        try:
            await self._group(shard)
            gone: Any = await self._forget(keys=self._keys(shard), args=[GROUP, consumer, idle_ms])
        except REDIS_ERRORS as exc:
            raise BusError(f"cannot delete stopped webhook consumers: {exc}") from exc
        return int(gone)

    async def ack(self, recorded: Recorded) -> None:
        try:
            await self._client.xack(webhook_key(recorded.shard), GROUP, recorded.position)
        except REDIS_ERRORS as exc:
            raise BusError(f"cannot acknowledge a webhook event: {exc}") from exc

    async def dead_letter(self, recorded: Recorded, error: str) -> None:
        flat = [x for item in recorded.fields.items() for x in item]
        keys = [webhook_key(recorded.shard), webhook_dead_key(recorded.shard)]
        try:
            await self._dead_letter(
                keys=keys, args=[GROUP, recorded.position, error, DEAD_LETTERS_KEPT, *flat]
            )
        except REDIS_ERRORS as exc:
            raise BusError(f"cannot keep a dead letter: {exc}") from exc

    async def dead_letters(self, count: int) -> list[DeadLetter]:
        found: list[DeadLetter] = []
        try:
            for shard in range(SHARDS):
                entries: Any = await self._client.xrange(webhook_dead_key(shard), count=count)
                for position, raw in entries:
                    fields = _text(raw)
                    error, first = fields.pop("x", ""), fields.pop("p", "")
                    recorded = Recorded(shard, first, fields)
                    found.append(DeadLetter(f"{shard}:{position.decode()}", recorded, error))
        except REDIS_ERRORS as exc:
            raise BusError(f"cannot read the dead letters: {exc}") from exc
        return found[:count]

    async def replay(self, dead_id: str) -> bool:
        shard_text, _, position = dead_id.partition(":")
        if not shard_text.isdigit() or int(shard_text) >= SHARDS or not position:
            return False
        shard = int(shard_text)
        try:
            keys = [webhook_dead_key(shard), webhook_key(shard)]
            return bool(await self._replay(keys=keys, args=[position]))
        except REDIS_ERRORS as exc:
            if "Invalid stream ID" in str(exc):
                return False
            raise BusError(f"cannot replay a dead letter: {exc}") from exc

    async def backlog(self) -> int:
        total = 0
        try:
            for shard in range(SHARDS):
                await self._group(shard)
                for group in await self._client.xinfo_groups(webhook_key(shard)):
                    if group["name"] in (GROUP, GROUP.encode()):
                        total += int(group.get("lag") or 0) + int(group["pending"])
        except REDIS_ERRORS as exc:
            raise BusError(f"cannot read the webhook backlog: {exc}") from exc
        return total

    async def meeting(self, room: str) -> tuple[str | None, int]:
        try:
            reply: Any = await self._client.hmget(state_key(room), ["w", "n"])
        except REDIS_ERRORS as exc:
            raise BusError(f"cannot read the room's meeting: {exc}") from exc
        started, present = reply
        return (started.decode() if started else None), int(present or 0)

    async def session_data(self, room: str) -> dict[str, Any]:
        try:
            flat: Any = await self._session_data(keys=[state_key(room)])
        except REDIS_ERRORS as exc:
            raise BusError(f"cannot read the room's session data: {exc}") from exc
        data: dict[str, Any] = {}
        for i in range(0, len(flat), 2):
            _, _, stored = flat[i + 1].decode().partition(" ")
            if stored.startswith("v"):  # (else a tombstone: "d")
                data[flat[i].decode()[2:]] = orjson.loads(stored[1:])
        return data
