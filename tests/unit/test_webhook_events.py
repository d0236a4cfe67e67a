"""Webhook events (roomstate.webhooks.events): Daily's format, ids, the signature, the types."""

from __future__ import annotations

import base64
import hashlib
import hmac

import orjson
import pytest

from roomstate.webhooks.events import (
    TYPES,
    Recorded,
    WebhookError,
    check_signature,
    decode_secret,
    parse_types,
    sign,
    to_event,
)

INFO = orjson.dumps({"user_name": "ann", "user_id": "u-ann", "owner": True, "joined_at": 1_000})


def test_a_join_reads_as_daily_participant_joined() -> None:
    recorded = Recorded(3, "1700-0", {"k": "j", "r": "demo", "s": "sid1", "i": INFO.decode()})
    event = to_event(recorded, now_ms=5_500)
    assert event == {
        "version": "1.0.0",
        "type": "participant.joined",
        "id": "par-joi-3-1700-0",
        "event_ts": 5.5,
        "payload": {
            "room": "demo",
            "session_id": "sid1",
            "user_id": "u-ann",
            "user_name": "ann",
            "owner": True,
            "joined_at": 1.0,
        },
    }


def test_a_leave_carries_its_reason_and_duration() -> None:
    fields = {"k": "l", "r": "demo", "s": "sid1", "i": INFO.decode(), "w": "node-lost"}
    event = to_event(Recorded(0, "9-1", {**fields, "t": "61000"}), now_ms=70_000)
    assert event["type"] == "participant.left"
    assert event["payload"]["reason"] == "node-lost"
    assert event["payload"]["duration"] == 60.0


def test_a_participant_without_info_is_still_named_by_its_session() -> None:
    event = to_event(Recorded(0, "1-0", {"k": "l", "r": "x", "s": "sid9"}), now_ms=0)
    assert event["payload"]["user_id"] == "sid9"
    assert event["payload"]["reason"] == "left"
    assert "duration" not in event["payload"]


def test_meeting_events_name_the_meeting_by_its_start() -> None:
    started = to_event(Recorded(1, "5-0", {"k": "s", "r": "demo", "m": "2000"}), now_ms=0)
    ended = to_event(Recorded(1, "9-0", {"k": "e", "r": "demo", "m": "2000", "t": "9000"}), 0)
    assert started["payload"] == {"room": "demo", "meeting_id": "demo-2000", "start_ts": 2.0}
    assert ended["payload"]["meeting_id"] == "demo-2000"
    assert ended["payload"]["end_ts"] == 9.0


def test_session_data_is_the_converged_data() -> None:
    recorded = Recorded(1, "5-0", {"k": "d", "r": "demo", "d": '{"poll": 3}', "t": "4000"})
    assert to_event(recorded, 0)["payload"] == {
        "room": "demo",
        "meeting_session_data": {"poll": 3},
        "updated_at": 4.0,
    }


def test_every_delivery_of_one_recorded_event_has_one_id() -> None:
    a = Recorded(2, "10-0", {"k": "j", "r": "demo", "s": "s"})
    b = Recorded(2, "10-0", {"k": "j", "r": "demo", "s": "s"})
    other_shard = Recorded(3, "10-0", {"k": "j", "r": "demo", "s": "s"})
    assert to_event(a, 1)["id"] == to_event(b, 2)["id"] != to_event(other_shard, 1)["id"]


def test_a_meeting_ends_under_one_id_however_often_its_room_emptied() -> None:
    first = Recorded(1, "9-0", {"k": "e", "r": "demo", "m": "2000", "t": "9000"})
    again = Recorded(1, "12-0", {"k": "e", "r": "demo", "m": "2000", "t": "12000"})
    later = Recorded(1, "99-0", {"k": "e", "r": "demo", "m": "50000", "t": "99000"})
    assert first.id == again.id != later.id


def test_an_unknown_kind_names_the_rule() -> None:
    with pytest.raises(WebhookError, match="unknown kind 'z'"):
        to_event(Recorded(0, "1-0", {"k": "z"}), 0)


def test_the_signature_is_daily_s() -> None:
    # Computed here from the definition, independently of `sign`.
    key = b"0123456789abcdef0123456789abcdef"
    secret = base64.b64encode(key).decode()
    body = b'{"type":"participant.joined"}'
    expected = base64.b64encode(
        hmac.new(key, b"1733612400." + body, hashlib.sha256).digest()
    ).decode()
    assert sign(decode_secret(secret), 1733612400, body) == expected
    assert check_signature(key, "1733612400", body, expected)
    assert not check_signature(key, "1733612401", body, expected)
    assert not check_signature(key, "1733612400", body + b" ", expected)
    assert not check_signature(key, "-1", body, expected)


@pytest.mark.parametrize("secret", ["not base64!", base64.b64encode(b"short").decode()])
def test_a_bad_secret_is_refused_with_its_rule(secret: str) -> None:
    with pytest.raises(WebhookError, match="ROOMSTATE_WEBHOOK_SECRET"):
        decode_secret(secret)


def test_types_are_chosen_by_name() -> None:
    assert parse_types("") == TYPES == parse_types("*")
    assert parse_types("participant.joined, meeting.ended") == {
        "participant.joined",
        "meeting.ended",
    }
    with pytest.raises(WebhookError, match=r"names participant\.kicked"):
        parse_types("participant.kicked")
