"""The server's fan-out: one WebSocket frame built per event, the same bytes handed to every
recipient (the hot path of a room's events)."""

from __future__ import annotations

from roomstate.server.fastpath import fan_out, ws_frame


class Recording:
    """Just enough of a `Connection` for the fan-out: it records what it is handed."""

    room: str | None = None
    session_id: str | None = None

    def __init__(self) -> None:
        self.delivered: list[tuple[bytes, bytes | None]] = []

    def deliver(self, frame: bytes, wire: bytes | None = None) -> None:
        self.delivered.append((frame, wire))


def test_fan_out_hands_every_recipient_the_same_websocket_frame() -> None:
    frame = b'{"type":"app-message","data":1,"fromId":"a","seq":"1"}'
    recipients = [Recording() for _ in range(3)]
    fan_out(frame, recipients)  # type: ignore[arg-type]
    wires = [r.delivered[0][1] for r in recipients]
    assert all(r.delivered == [(frame, ws_frame(frame))] for r in recipients)
    assert wires[0] is wires[1] is wires[2], "built once, not once per recipient"
