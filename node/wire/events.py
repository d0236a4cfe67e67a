"""Bus events: what nodes tell each other about a room, and their byte encoding. Sans-I/O.

An event carries either a CRDT delta (joins, leaves, userData and session-data writes) or an app
message. It is encoded once by its publisher and stored in the room's stream as one field::

    {"o": ORIGIN, "t": SENT_MS, "d": DELTA?, "m": {"data", "from", "to"}?, "r": REASON?}

`ORIGIN` is ``"{node}/{incarnation}"``, so a node can skip what it published itself.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from roomstate.crdt import CodecError, RoomState, from_obj, to_obj

__all__ = ["AppMessage", "BusEvent", "decode_event", "encode_event"]


# Named tuples rather than frozen dataclasses: as immutable, and made in half the time (a node
# makes or decodes one of each per app message; docs/decisions/0008-hot-path-levers.md)
class AppMessage(NamedTuple):
    data: Any
    from_id: str  # the sender's session id, or "API" for the REST endpoint
    to: str | tuple[str, ...]  # "*" or the recipients' session ids


class BusEvent(NamedTuple):
    origin: str  # "{node}/{incarnation}" of the publisher
    sent_ms: int  # the publisher's wall clock at publishing, for delivery-latency metrics
    delta: RoomState | None = None
    message: AppMessage | None = None
    reason: str | None = None  # why the delta removes participants: "left", "disconnected", ...


def encode_event(event: BusEvent) -> bytes:
    obj: dict[str, Any] = {"o": event.origin, "t": event.sent_ms}
    if event.delta is not None:
        obj["d"] = to_obj(event.delta)
    if event.message is not None:
        message = event.message
        obj["m"] = {
            "data": message.data,
            "from": message.from_id,
            "to": message.to if isinstance(message.to, str) else list(message.to),
        }
    if event.reason is not None:
        obj["r"] = event.reason
    return orjson.dumps(obj)


def decode_event(data: bytes | str) -> BusEvent:
    """Decode `encode_event`'s bytes; raise `CodecError` on anything else."""
    try:
        obj = orjson.loads(data)
        delta = from_obj(obj["d"], RoomState) if "d" in obj else None
        message = None
        if "m" in obj:
            m = obj["m"]
            to = m["to"] if isinstance(m["to"], str) else tuple(m["to"])
            message = AppMessage(m["data"], m["from"], to)
        return BusEvent(obj["o"], obj["t"], delta, message, obj.get("r"))
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise CodecError(f"not a bus event: {exc!r}") from None
