"""The webhook queue on Redis: a consumer group, shared by every node, on each shard's webhook
stream (keys.py), which the PUBLISH script appends to as it stores a change (scripts.py).

Each node reads with XREADGROUP as its own consumer; what it was handed stays pending under it
until XACK. A node that dies leaves its pending events behind: another node takes them over
with XAUTOCLAIM once they have been idle for the claim timeout. A node still retrying an event
touches it (XCLAIM to itself) so that it is not taken over meanwhile. Dead letters go to the
shard's dead-letter stream in the same script that acknowledges them.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from roomstate.bus.redis.connections import REDIS_ERRORS, Connections
from roomstate.bus.redis.keys import SHARDS, state_key, webhook_dead_key, webhook_key
from roomstate.bus.redis.scripts import SESSION_DATA_READ
from roomstate.errors import BusError
from roomstate.webhooks.events import Recorded
from roomstate.webhooks.queue import DEAD_LETTERS_KEPT, DeadLetter, WebhookQueue

__all__ = ["GROUP", "RedisWebhookQueue"]

log = logging.getLogger(__name__)

GROUP = "webhooks"  # the consumer group every node reads the webhook streams in
CLAIM_PAGE = 100  # pending entries XAUTOCLAIM looks at per call
CLAIM_PAGES = 10  # calls per shard and round, at most (the next round starts over)

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


def _text(fields: dict[Any, Any]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in fields.items()}


class RedisWebhookQueue(WebhookQueue):
    def __init__(self, conns: Connections) -> None:
        self._client = conns.client
        self._grouped: set[int] = set()  # shards whose group this node has made sure of
        self._dead_letter = self._client.register_script(_DEAD_LETTER)
        self._replay = self._client.register_script(_REPLAY)
        self._session_data = self._client.register_script(SESSION_DATA_READ)
        self._next = 0  # the shard the next read starts at (each gets its turn)

    async def _group(self, shard: int) -> None:
        if shard in self._grouped:
            return
        try:  # from the stream's start: events recorded before any node read them count
            await self._client.xgroup_create(webhook_key(shard), GROUP, id="0", mkstream=True)
        except REDIS_ERRORS as exc:
            if "BUSYGROUP" not in str(exc):
                raise BusError(f"cannot make the webhook consumer group: {exc}") from exc
        self._grouped.add(shard)

    async def read(self, consumer: str, count: int) -> list[Recorded]:
        taken: list[Recorded] = []
        start, self._next = self._next, (self._next + 1) % SHARDS
        for i in range(SHARDS):
            shard = (start + i) % SHARDS
            if len(taken) >= count:
                break
            try:
                await self._group(shard)
                reply: Any = await self._client.xreadgroup(
                    GROUP, consumer, {webhook_key(shard): ">"}, count=count - len(taken)
                )
            except REDIS_ERRORS as exc:
                if "NOGROUP" in str(exc):  # Redis lost the stream: make the group again
                    self._grouped.discard(shard)
                raise BusError(f"cannot read webhook events: {exc}") from exc
            for _, entries in reply or ():
                taken += [Recorded(shard, p.decode(), _text(f)) for p, f in entries if f]
        return taken

    async def claim_stale(self, consumer: str, idle_ms: int, count: int) -> list[Recorded]:
        taken: list[Recorded] = []
        for shard in range(SHARDS):
            if len(taken) >= count:
                break
            cursor: Any = "0-0"  # through the whole pending list, a page at a time
            for _ in range(CLAIM_PAGES):
                try:
                    await self._group(shard)
                    reply: Any = await self._client.xautoclaim(
                        webhook_key(shard), GROUP, consumer, idle_ms, cursor, count=CLAIM_PAGE
                    )
                except REDIS_ERRORS as exc:
                    raise BusError(f"cannot take over webhook events: {exc}") from exc
                # (entries trimmed from the stream meanwhile come back empty: nothing to send)
                taken += [Recorded(shard, p.decode(), _text(f)) for p, f in reply[1] if f]
                cursor = reply[0]
                if cursor in (b"0-0", "0-0") or len(taken) >= count:
                    break
        return taken

    async def touch(self, consumer: str, recorded: Recorded) -> None:
        try:
            await self._client.xclaim(
                webhook_key(recorded.shard), GROUP, consumer, 0, [recorded.position], justid=True
            )
        except REDIS_ERRORS as exc:
            raise BusError(f"cannot keep a webhook event claimed: {exc}") from exc

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
