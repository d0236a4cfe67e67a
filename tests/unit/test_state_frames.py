"""Converged state goes out as the same bytes on every node, whatever the arrival order."""

from __future__ import annotations

from roomstate.crdt import HybridLogicalClock, RoomState
from roomstate.room import Room, RoomConfig
from roomstate.wire.events import BusEvent
from roomstate.wire.protocol import SetMeetingSessionData


def make_room(name: str) -> Room:
    return Room("r", RoomState(), HybridLogicalClock(name), f"{name}/i", RoomConfig())


def test_session_state_is_sent_as_the_same_bytes_whatever_the_arrival_order() -> None:
    events: list[BusEvent] = []
    for i in range(3):
        data = {f"k{i}": {"z": i, "a": [i, {"y": 1, "b": 2}]}, f"j{i}": i}
        write = SetMeetingSessionData(None, data, "shallow-merge", ())
        events += make_room(f"w{i}").set_session_data(write, 10 + i).publish
    tails = []
    for name, order in (("o1", events), ("o2", events[::-1]), ("o3", events[1:] + events[:1])):
        room = make_room(name)
        for event in order:
            room.receive(event, 100, "1")
        tails.append(room.joined_frames(None, "s")[0].split(b'"meetingSessionState":')[1])
    assert tails[0] == tails[1] == tails[2]
    assert tails[0].startswith(b'{"data":{"j0":0,"j1":1,"j2":2,"k0":{"a":[0,{"b":2,"y":1}],"z":0}')
