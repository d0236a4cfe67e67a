"""The in-memory bus: one process, no Redis: the embedded default of `roomstate serve`, and the
twin the bus conformance suite checks the Redis bus against."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from typing import Any

import orjson

from roomstate.bus.base import Bus, EventHandler, LeaseState, Snapshot
from roomstate.crdt import DEFAULT_KEEP_MS, DEFAULT_MAX_DRIFT_MS, RoomState
from roomstate.webhooks.queue import MemoryWebhookQueue
from roomstate.wire.events import BusEvent, decode_event, encode_event

__all__ = ["MemoryBus"]

LOG_LENGTH = 1000  # events kept per room for replay (the Redis bus trims its streams likewise)


class MemoryBus(Bus):
    """The in-process bus: a log position counter, a stored state per room, direct delivery.

    Events go through the codec on publish, as they would through Redis, and every subscriber
    gets the same decoded event (merge never mutates its argument).
    """

    def __init__(
        self,
        room_grace_s: float = 30.0,
        keep_ms: int = DEFAULT_KEEP_MS,
        max_drift_ms: int = DEFAULT_MAX_DRIFT_MS,
    ) -> None:
        self.room_grace_s = room_grace_s  # how long an empty room's state is kept
        self.keep_ms = keep_ms  # removals are forgotten past this (docs/crdt.md)
        self.max_drift_ms = max_drift_ms  # the drift bound, whose double is the margin past it
        self._states: dict[str, RoomState] = {}
        self._positions: dict[str, int] = {}
        self._subscribers: dict[str, list[tuple[int, EventHandler]]] = {}
        self._expiry: dict[str, asyncio.TimerHandle] = {}
        self._leases: dict[str, str] = {}  # node id -> incarnation
        self._logs: dict[str, deque[tuple[int, BusEvent]]] = {}  # the latest events per room
        self._hooks = MemoryWebhookQueue()  # recorded as the PUBLISH script records
        self.webhook_queue = self._hooks
        self._hooks.meeting_of = self._meeting_of
        self._hooks.session_data_of = self._session_data_of
        self._data_waiting: set[str] = set()  # rooms with a session-data.updated not yet read
        self._meetings: dict[str, int] = {}  # room -> when (ms) its meeting started (webhooks)

    async def start(self) -> None:
        pass

    def start_reading(self, origin: str) -> None:
        pass  # delivery is direct, from `publish`

    async def close(self) -> None:
        for handle in self._expiry.values():
            handle.cancel()
        self._expiry.clear()
        self._subscribers.clear()

    @property
    def ready(self) -> bool:
        return True

    async def publish(
        self, room: str, event: BusEvent, only_if_at: tuple[str, Any] | None = None
    ) -> str | None:
        event = decode_event(encode_event(event))
        if event.delta is None and room not in self._subscribers:
            return str(self._positions.get(room, 0))  # nobody hosts the room: nobody to tell
        state = self._states.setdefault(room, RoomState())
        if only_if_at is not None:
            located = state.participants.get(only_if_at[0])
            if located is None or located.location is None:
                return None
            if located.location.value != only_if_at[1]:
                return None
        position = self._positions.get(room, 0) + 1
        self._positions[room] = position
        self._logs.setdefault(room, deque(maxlen=LOG_LENGTH)).append((position, event))
        if event.delta is not None:
            present = state.present() if self.webhooks else None
            infos = {sid: p.info.value for sid, p in present.items() if p.info} if present else {}
            changes = state.merge(event.delta)
            if present is not None:
                self._record(room, state, infos, event.reason, changes.session_data)
            # removals are forgotten past the horizon, dated by the events that stored them
            state.collect(event.sent_ms, self.keep_ms, self.max_drift_ms)
            self._schedule_expiry(room, state)
        for after, handler in list(self._subscribers.get(room, ())):
            if position > after:
                handler(room, str(position), event)
        return str(position)

    async def snapshot(self, room: str) -> Snapshot:
        state = self._states.get(room)
        position = self._positions.get(room, 0)
        return Snapshot(state.copy() if state is not None else RoomState(), str(position))

    async def read_range(self, room: str, after: str) -> list[tuple[str, BusEvent]] | None:
        if not after.isdigit():  # not a position of this bus (a Redis stream id): unknown
            return None
        log, start = self._logs.get(room, deque()), int(after)
        if start < self._positions.get(room, 0) and (not log or log[0][0] > start + 1):
            return None
        return [(str(position), event) for position, event in log if position > start]

    def position(self, room: str) -> str:
        return str(self._positions.get(room, 0))

    def subscribe(self, room: str, after: str, handler: EventHandler) -> None:
        self._subscribers.setdefault(room, []).append((int(after), handler))

    def unsubscribe(self, room: str, handler: EventHandler) -> None:
        remaining = [(a, h) for a, h in self._subscribers.get(room, ()) if h != handler]
        if remaining:
            self._subscribers[room] = remaining
        else:
            self._subscribers.pop(room, None)

    async def renew_lease(
        self, node_id: str, incarnation: str, ttl_ms: int, register: bool
    ) -> LeaseState:
        # One process: a node's lease is lost only if another incarnation took it.
        if register or self._leases.get(node_id, incarnation) == incarnation:
            self._leases[node_id] = incarnation
            return "held"
        return "taken"

    async def lost_rooms(self, rooms: list[str]) -> list[str]:
        return []  # the store lives and dies with the node

    async def live_incarnations(self, node_ids: list[str]) -> dict[str, set[str]]:
        return {node_id: set(filter(None, [self._leases.get(node_id)])) for node_id in node_ids}

    def lease_confirmed_at(self, room: str) -> float:
        return math.inf  # one process: nobody else can judge this node lost

    def _meeting_of(self, room: str) -> tuple[str | None, int]:
        state, started = self._states.get(room), self._meetings.get(room)
        present = len(state.present()) if state is not None else 0
        return (None if started is None else str(started)), present

    def _session_data_of(self, room: str) -> dict[str, Any]:
        self._data_waiting.discard(room)
        state = self._states.get(room)
        return state.session_data.value() if state is not None else {}

    def _record(
        self,
        room: str,
        state: RoomState,
        before: dict[str, Any],
        reason: str | None,
        data_changed: bool,
    ) -> None:
        """What a stored delta changed, for the webhooks (as the PUBLISH script records it)."""
        now = int(time.time() * 1000)
        after = state.present()
        entries: list[dict[str, str]] = []
        if after and room not in self._meetings:  # the first participant of no meeting
            self._meetings[room] = now
            entries.append({"k": "s"})
        for sid, p in after.items():
            if sid not in before and p.info is not None:
                entries.append({"k": "j", "s": sid, "i": _canonical(p.info.value)})
        for sid, info in before.items():
            if sid not in after:
                entries.append({"k": "l", "s": sid, "i": _canonical(info), "w": reason or ""})
        if not after and any(fields["k"] == "l" for fields in entries) and room in self._meetings:
            entries.append({"k": "e"})  # delivered once the room's grace has passed
        if data_changed and room not in self._data_waiting:  # coalesced, as PUBLISH does
            self._data_waiting.add(room)
            entries.append({"k": "d"})
        meeting = str(self._meetings.get(room, ""))
        for fields in entries:
            self._hooks.record({"r": room, "t": str(now), "m": meeting, **fields})

    def _schedule_expiry(self, room: str, state: RoomState) -> None:
        handle = self._expiry.pop(room, None)
        if handle is not None:
            handle.cancel()
        if not any(p.present for p in state.participants.values()):
            loop = asyncio.get_running_loop()
            self._expiry[room] = loop.call_later(self.room_grace_s, self._expire, room)

    def _expire(self, room: str) -> None:
        self._expiry.pop(room, None)
        self._states.pop(room, None)  # positions stay: they only ever grow
        self._meetings.pop(room, None)
        self._logs.pop(room, None)


def _canonical(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
