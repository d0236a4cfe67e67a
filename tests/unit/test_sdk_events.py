"""The Python SDK's events as the app sees them (roomstate.sdk.events): daily-js's `action` on
every event, `once`, and meetingState() from the lifecycle events."""

from __future__ import annotations

from typing import Any

import pytest

from roomstate.sdk.events import MEETING_STATES, Emitter


def test_every_event_carries_its_name_as_action() -> None:
    emitter = Emitter()
    got: list[dict[str, Any]] = []
    emitter.on("app-message", got.append)
    emitter.emit([("app-message", {"data": 1, "fromId": "s-1"})])
    assert got == [{"action": "app-message", "data": 1, "fromId": "s-1"}]
    assert emitter.events("app-message") == got


def test_once_runs_for_the_next_event_only() -> None:
    emitter = Emitter()
    got: list[Any] = []
    emitter.once("app-message", lambda event: got.append(event["data"]))
    emitter.emit([("app-message", {"data": 1}), ("app-message", {"data": 2})])
    assert got == [1]


def test_off_removes_a_once_handler_by_the_function_given() -> None:
    emitter = Emitter()
    got: list[Any] = []
    emitter.once("app-message", got.append)
    emitter.off("app-message", got.append)
    emitter.emit([("app-message", {"data": 1})])
    assert got == []


def test_meeting_state_follows_the_lifecycle_events() -> None:
    emitter = Emitter()
    assert emitter.meeting_state == "new"
    seen = []
    for state in ("loading", "loaded", "joining-meeting", "joined-meeting"):
        emitter.emit([(state, {})])
        seen.append(emitter.meeting_state)
    emitter.emit([("app-message", {"data": 1})])
    assert seen == ["loading", "loaded", "joining-meeting", "joined-meeting"]
    assert emitter.meeting_state == "joined-meeting"
    emitter.emit([("left-meeting", {"reason": "left"})])
    assert emitter.meeting_state == "left-meeting"
    assert set(MEETING_STATES) == {"new", *seen, "left-meeting", "error"}


def test_an_error_outlasts_the_left_meeting_after_it() -> None:
    emitter = Emitter()
    emitter.emit([("joined-meeting", {}), ("error", {"errorMsg": "x"}), ("left-meeting", {})])
    assert emitter.meeting_state == "error"
    emitter.emit([("loading", {})])  # a new join
    assert emitter.meeting_state == "loading"


def test_an_unknown_event_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown event 'track-started'"):
        Emitter().once("track-started", print)
