"""What the room logic is configured with and what it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from roomstate.wire.events import BusEvent
from roomstate.wire.protocol import ROSTER_PAGE_BYTES, Limits

__all__ = ["Output", "RoomConfig", "Snapshot"]


@dataclass(frozen=True)
class RoomConfig:
    limits: Limits = field(default_factory=Limits)
    user_data_interval_ms: int = 100  # at most one participant-updated per participant per this
    session_data_interval_ms: int = 1000  # at most one session-state event per room per this
    counts_interval_ms: int = 1000  # at most one participant-counts-updated per room per this
    # participant events are batched per loop turn, and while they keep coming, per this window
    membership_batch_ms: int = 0
    roster_page_bytes: int = ROSTER_PAGE_BYTES  # a larger roster goes out in pages of this


@dataclass
class Output:
    """What a step of the room logic asks the node to do."""

    sends: list[tuple[list[str], bytes]] = field(default_factory=list)  # (local sids, frame)
    publish: list[BusEvent] = field(default_factory=list)

    def send(self, recipients: list[str], frame: bytes) -> None:
        if recipients:
            self.sends.append((recipients, frame))


class Snapshot(NamedTuple):
    """A room's state as a `joined` frame shows it, taken at one moment."""

    participants: dict[str, dict[str, Any]]
    session_data: dict[str, Any]
    participant_counts: dict[str, int] | None = None  # None: counted when the frame is made
