"""Sessions on a node with no server: its clients are plain objects that satisfy
`roomstate.edge.clients.Client`, its frames go out through the default fan-out (`send_each`), its
bus is the in-memory one. What the node needs of a connection is the `Client` protocol, nothing
of aiohttp."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson

from roomstate.bus import MemoryBus
from roomstate.crdt import HybridLogicalClock, RoomState
from roomstate.edge.node import Node
from roomstate.room import Room, RoomConfig
from roomstate.settings import Settings
from roomstate.wire.protocol import parse

ROOM = "lobby"


class PlainClient:
    """A `Client` that keeps what it is sent."""

    def __init__(self) -> None:
        self.room: str | None = None
        self.session_id: str | None = None
        self.frames: list[dict[str, Any]] = []
        self.held: list[dict[str, Any]] | None = None
        self.closed: int | None = None

    def send(self, frame: bytes) -> None:
        (self.held if self.held is not None else self.frames).append(orjson.loads(frame))

    def send_first(self, frame: bytes) -> None:
        self.frames.append(orjson.loads(frame))

    def hold(self) -> None:
        self.held = []

    def release(self, replayed: frozenset[str] = frozenset()) -> None:
        held, self.held = self.held or [], None
        self.frames += held

    def close_soon(self, code: int, message: str, flush: bool = False) -> None:
        self.closed = code

    async def flush_and_close(self, code: int, message: str) -> None:
        self.closed = code

    def last(self, kind: str) -> dict[str, Any]:
        return [f for f in self.frames if f["type"] == kind][-1]


@contextlib.asynccontextmanager
async def plain_node(settings: Settings) -> AsyncIterator[Node]:
    bus = MemoryBus()
    await bus.start()
    node = Node(settings, bus)
    await node.start()
    try:
        yield node
    finally:
        await node.shutdown()
        await bus.close()


async def request(node: Node, client: PlainClient, **frame: Any) -> None:
    await node.handle(client, parse(orjson.dumps(frame), node.limits), ROOM)


async def test_a_node_without_a_server_delivers_to_plain_clients() -> None:
    async with plain_node(Settings()) as node:
        ada, bob = PlainClient(), PlainClient()
        await request(node, ada, type="join", id=1)
        await request(node, bob, type="join", id=1)
        await request(node, ada, type="send-app-message", id=2, data={"hi": 1})
        assert ada.last("ack")["id"] == 2
        message = bob.last("app-message")
        assert (message["data"], message["fromId"]) == ({"hi": 1}, ada.session_id)
        assert node.metrics.frames_out.counts["app-message"] == 1, "counted once"
    assert (ada.closed, bob.closed) == (1012, 1012), "closed by the shutdown"


async def test_a_resume_moves_the_participant_to_the_new_connection() -> None:
    async with plain_node(Settings(resume_grace_s=30)) as node:
        old = PlainClient()
        await request(node, old, type="join", id=1)
        sid, token = old.session_id, old.last("joined")["resumeToken"]
        assert sid is not None
        await node.disconnect(old, "disconnected")
        assert node.sessions.is_away(sid)
        new = PlainClient()
        await request(node, new, type="join", id=2, resume=token)
        assert new.last("joined")["resumed"] is True
        assert (new.session_id, node.sessions.is_away(sid)) == (sid, False)
        stored = (await node.bus.snapshot(ROOM)).state.participants[sid].location
        assert stored is not None and stored.value == node.identity.location()


def test_a_move_is_not_applied_before_it_is_stored() -> None:
    clock = HybridLogicalClock("n1")
    room = Room(ROOM, RoomState(), clock, "n1/i1", RoomConfig())
    room.join("a", {"user_id": "a"}, {"node": "n0", "incarnation": "i0"}, None, 1000)
    delta = room.move("a", {"node": "n1", "incarnation": "i1"}, 2000)
    location = room.state.participants["a"].location
    assert location is not None and location.value == {"node": "n0", "incarnation": "i0"}
    moved = delta.participants["a"]
    assert moved.location is not None and moved.info is None and moved.user_data is None
    room.state.merge(delta)
    location = room.state.participants["a"].location
    assert location is not None and location.value == {"node": "n1", "incarnation": "i1"}
