"""Room logic: one node's replica of a room and who receives what. Sans-I/O.

- `room.py`: the `Room` (requests and bus events in, `Output` out, timers by `now_ms`);
- `roster.py`: the participants as the wire shows them: encodings, who is listed, counts;
- `pacing.py`: throttles and the per-turn batch of participant events;
- `outputs.py`: `RoomConfig`, `Output`, `Snapshot`.
"""

from __future__ import annotations

from roomstate.room.outputs import Output, RoomConfig, Snapshot
from roomstate.room.room import Room

__all__ = ["Output", "Room", "RoomConfig", "Snapshot"]
