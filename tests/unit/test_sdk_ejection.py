"""The Python SDK's owner controls, no socket: `update_participant` and being ejected
(roomstate.sdk.state)."""

from __future__ import annotations

import orjson
import pytest

from roomstate.crdt import Json
from roomstate.sdk.errors import Forbidden
from roomstate.wire.protocol import Limits, UpdateParticipant, encode_error, parse

from .test_sdk_state import BOB, ack, in_room, sent


def test_update_participant_is_the_frame_the_node_parses_as_an_eject() -> None:
    state = in_room()
    request = state.update_participant(BOB, {"eject": True})
    assert parse(state.encode(request), Limits()) == UpdateParticipant(request.id, BOB, True)
    reply = state.receive_frame(ack(request))
    assert reply is not None and reply.error is None


def test_a_refused_eject_is_the_forbidden_error() -> None:
    state = in_room()
    request = sent(state, state.update_participant(BOB, {"eject": True}))
    frame = encode_error(request.id, "forbidden", "ejecting a participant needs an owner")
    reply = state.receive_frame(orjson.loads(frame))
    assert reply is not None and isinstance(reply.error, Forbidden)


@pytest.mark.parametrize("updates", [{"eject": False}, {"setAudio": False}, {}])
def test_only_an_eject_is_an_update(updates: dict[str, Json]) -> None:
    with pytest.raises(ValueError, match="one update"):
        in_room().update_participant(BOB, updates)


def test_close_4004_is_an_ejection_as_daily_js_reports_it() -> None:
    state = in_room()
    assert state.connection_lost(4004, expected=False)
    events = state.events_received()
    assert [name for name, _ in events] == ["error", "left-meeting"]
    error, left = events[0][1], events[1][1]
    assert error["error"]["type"] == "ejected" and "ejected" in error["errorMsg"]
    assert left["reason"] == "ejected"
    assert not state.in_meeting


def test_another_close_is_no_ejection() -> None:
    state = in_room()
    assert state.connection_lost(1006, expected=False)
    error, left = (payload for _, payload in state.events_received())
    assert error["error"]["type"] == "connection-error" and left["reason"] == "connection-closed"
