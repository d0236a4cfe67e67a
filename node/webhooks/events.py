"""Webhook events in Daily's format, made from what the store recorded, and their signature.
Pure: the clock and the secret are arguments.

The store records a `Recorded` event in the same atomic step that stores the change it reports
(the PUBLISH script, or the in-memory bus): its kind, room, participant and what the store held.
A delivery turns it into the JSON object a receiver gets::

    {"version": "1.0.0", "type": "participant.joined", "id": "...", "event_ts": 1733612400.123,
     "payload": {"room": ..., "session_id": ..., "user_id": ..., "user_name": ..., ...}}

`id` is made from where the store recorded the event, so every delivery of one event carries
the same id: a receiver drops repeats by it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "KINDS",
    "TYPES",
    "VERSION",
    "Recorded",
    "WebhookError",
    "check_signature",
    "decode_secret",
    "parse_types",
    "sign",
    "to_event",
]

VERSION = "1.0.0"

# The store's one-letter kinds (short: they are written per event inside Redis) -> Daily's type.
KINDS = {
    "s": "meeting.started",
    "e": "meeting.ended",
    "j": "participant.joined",
    "l": "participant.left",
    "d": "session-data.updated",
}
TYPES = frozenset(KINDS.values())

_PREFIX = {  # the start of an id, by type, as Daily's ids read ("met-sta-...", "par-joi-...")
    "meeting.started": "met-sta",
    "meeting.ended": "met-end",
    "participant.joined": "par-joi",
    "participant.left": "par-lef",
    "session-data.updated": "ses-upd",
}


class WebhookError(ValueError):
    """A recorded event or a webhook setting that breaks a rule (named in the message)."""


@dataclass(frozen=True)
class Recorded:
    """An event as the store recorded it: where (`shard`, `position` in that shard's webhook
    stream: together unique), and its fields (all text, as Redis keeps them):

        k  kind (a key of `KINDS`)           r  room
        t  when the store recorded it (ms)   m  when the room's meeting started (ms)
        s  session id                        i  the participant's stored info (JSON)
        w  why the participant left          d  the session data (JSON), for "d"
        o  a replayed event: its first position
    """

    shard: int
    position: str
    fields: dict[str, str]

    @property
    def type(self) -> str:
        kind = self.fields.get("k", "")
        if kind not in KINDS:
            raise WebhookError(f"recorded event {self.position}: unknown kind {kind!r}")
        return KINDS[kind]

    @property
    def room(self) -> str:
        return self.fields.get("r", "")

    @property
    def id(self) -> str:
        if self.type == "meeting.ended":  # one per meeting (a room may empty more than once)
            return f"{_PREFIX[self.type]}-{self.room}-{self.fields.get('m', '')}"
        # a replayed dead letter is recorded again: its first position ("o") keeps its id
        return f"{_PREFIX[self.type]}-{self.shard}-{self.fields.get('o', self.position)}"


def _seconds(ms: str | None) -> float | None:
    return None if not ms else int(ms) / 1000


def to_event(recorded: Recorded, now_ms: int) -> dict[str, Any]:
    """The JSON object a receiver gets for `recorded`, sent at `now_ms` (Unix ms)."""
    f = recorded.fields
    kind = recorded.type
    at = _seconds(f.get("t"))
    meeting = _seconds(f.get("m"))
    payload: dict[str, Any] = {"room": recorded.room}
    if kind.startswith("meeting."):
        payload["meeting_id"] = f"{recorded.room}-{f.get('m', '')}"
        payload["start_ts"] = meeting
        if kind == "meeting.ended":
            payload["end_ts"] = at
    elif kind.startswith("participant."):
        try:
            info = orjson.loads(f.get("i") or "{}")
        except orjson.JSONDecodeError as exc:
            raise WebhookError(f"recorded event {recorded.position}: info is not JSON") from exc
        sid = f.get("s", "")
        joined_ms = info.get("joined_at")
        joined = joined_ms / 1000 if isinstance(joined_ms, int | float) else None
        payload.update(
            session_id=sid,
            user_id=info.get("user_id", sid),
            user_name=info.get("user_name", ""),
            owner=bool(info.get("owner", False)),
            joined_at=joined,
        )
        if info.get("hidden") is True:
            payload["permissions"] = {"hasPresence": False}
        if kind == "participant.left":
            payload["reason"] = f.get("w") or "left"
            if joined is not None and at is not None:
                payload["duration"] = max(0.0, round(at - joined, 3))
    else:
        try:
            payload["meeting_session_data"] = orjson.loads(f.get("d") or "{}")
        except orjson.JSONDecodeError as exc:
            raise WebhookError(f"recorded event {recorded.position}: data is not JSON") from exc
        payload["updated_at"] = at
    return {
        "version": VERSION,
        "type": kind,
        "id": recorded.id,
        "payload": payload,
        "event_ts": now_ms / 1000,
    }


def decode_secret(secret: str) -> bytes:
    """The HMAC key: the secret is base64 (as Daily's `hmac` is)."""
    try:
        key = base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        raise WebhookError("ROOMSTATE_WEBHOOK_SECRET is not base64") from None
    if len(key) < 16:
        raise WebhookError(f"ROOMSTATE_WEBHOOK_SECRET decodes to {len(key)} bytes; the least is 16")
    return key


def sign(key: bytes, timestamp: int, body: bytes) -> str:
    """`X-Webhook-Signature`: base64 of HMAC-SHA256 with `key` over "<timestamp>.<body>"."""
    mac = hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def check_signature(key: bytes, timestamp: str, body: bytes, signature: str) -> bool:
    """Whether `signature` is `sign`'s for this timestamp and body (compared in constant time)."""
    if not timestamp.isdigit():
        return False
    return hmac.compare_digest(sign(key, int(timestamp), body), signature)


def parse_types(raw: str) -> frozenset[str]:
    """ROOMSTATE_WEBHOOK_TYPES: comma-separated types; "" or "*": all of them."""
    names = {name.strip() for name in raw.split(",") if name.strip()}
    if not names or names == {"*"}:
        return TYPES
    unknown = sorted(names - TYPES)
    if unknown:
        raise WebhookError(
            f"ROOMSTATE_WEBHOOK_TYPES names {', '.join(unknown)}: the types are"
            f" {', '.join(sorted(TYPES))}"
        )
    return frozenset(names)
