"""Pacing: how often events go out, and participant events batched per loop turn.

- `Throttle`: at most one event per key per interval; the first change after a quiet interval
  goes out at once, later ones are coalesced into one, due when the interval is over.
- `EventBatch`: the participant events (joined, updated, left) of one event-loop turn. The first
  one after a quiet turn goes out at once, as its own frame; those that follow in the same turn
  wait, and go out together when the node polls the room (its timer runs on the next loop turn)
  or before any other frame of the room: one ``participant-events`` frame per group of
  recipients, or the event's own frame if it is alone. With a window (`membership_batch_ms`),
  a batch that had events keeps the next window open: while a storm lasts, each local
  participant gets one frame per window, whatever the rate of joins; a window without events
  ends it, and the next event goes out at once again. The window grows with the room's local
  participants (`window_for`), so a storm costs a node about the same writes per second in a
  room of 100 as in one of 1,000; beyond, each gets a frame a second. Events for the owners
  only keep the owners' (short) window.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Container, Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from roomstate.room.outputs import Output

__all__ = ["CountsPacer", "EventBatch", "Throttle", "window_for"]

K = TypeVar("K", bound=Hashable)


class Throttle(Generic[K]):
    """At most one event per key per `interval_ms`."""

    def __init__(self, interval_ms: int) -> None:
        self.interval_ms = interval_ms
        self.sent: dict[K, int] = {}  # key -> when its last event went out
        self.due: dict[K, int] = {}  # key -> when its coalesced event goes out

    def changed(self, key: K, now_ms: int) -> bool:
        """Note a change; True if its event goes out now (then it counts as sent)."""
        if key in self.due:
            return False  # already scheduled: it will carry the latest value
        sent = self.sent.get(key)
        if sent is None or now_ms - sent >= self.interval_ms:
            self.sent[key] = now_ms
            return True
        self.due[key] = sent + self.interval_ms
        return False

    def take_due(self, now_ms: int) -> list[K]:
        """The keys whose coalesced event is due; they count as sent now."""
        if not self.due:
            return []
        keys = [key for key, due in self.due.items() if due <= now_ms]
        for key in keys:
            del self.due[key]
            self.sent[key] = now_ms
        return keys

    def next_deadline(self) -> int | None:
        return min(self.due.values()) if self.due else None

    def forget(self, key: K) -> None:
        self.sent.pop(key, None)
        self.due.pop(key, None)


class CountsPacer:
    """``participant-counts-updated``: at most one per interval, the first change after a quiet
    interval at the end of the turn (after its participant events); only to the participants
    whose last counts (in `joined` or an update) differ."""

    def __init__(self, interval_ms: int) -> None:
        self.interval_ms = interval_ms
        self.sent: int | None = None  # when the last counts event went out
        self.due: int | None = None  # when the next one goes out
        # the counts each local participant was last given (in `joined` or an update): nobody
        # gets an update that tells it nothing new (a lone joiner, say)
        self.seen: dict[str, dict[str, int]] = {}

    def changed(self, now_ms: int) -> None:
        if self.due is None:
            sent, gap = self.sent, self.interval_ms
            self.due = now_ms if sent is None or now_ms - sent >= gap else sent + gap

    def take(
        self, now_ms: int, read: Callable[[], dict[str, int]], local: Iterable[str]
    ) -> tuple[dict[str, int] | None, list[str]]:
        """The counts to send now, if due and changed (`read` gives them: called only then),
        and those of `local` to send them to."""
        if self.due is None or self.due > now_ms:
            return None, []
        self.due = None
        counts = read()
        # Whom to tell is per participant, not "differs from the last broadcast": a joiner's
        # `joined` may show counts that a leave in the same interval has already undone.
        seen = self.seen
        recipients = [sid for sid in local if seen.get(sid) != counts]
        if not recipients:
            return None, []
        self.sent = now_ms
        seen.update(dict.fromkeys(recipients, counts))
        return counts, recipients


@dataclass(frozen=True)
class Pending:
    """A participant event waiting for the end of the turn."""

    tick: int  # its place among events and local arrivals (`EventBatch.tick`)
    subject: str  # the session id it is about
    frame: bytes  # its own frame, as sent when alone
    owners_only: bool  # about a hidden participant: for owners only


# A storm's batch frame costs the node a write per local participant. Scaling the window with
# them (1 ms each: 200 local participants, a frame each 200 ms) holds a storm near 1,000 writes
# a second per room; from 1,000 local participants the window stays at 1 s, the pace of the
# counts (docs/decisions/0019-membership-window-1-ms-and-heap-pad.md).
WINDOW_MS_PER_RECIPIENT = 1.0
MAX_WINDOW_MS = 1000


def window_for(base_ms: int, recipients: int) -> int:
    """The batch window for a room with `recipients` local participants: at least `base_ms`
    (the setting; 0 keeps one batch per loop turn), longer in a large room, at most 1 s."""
    if base_ms <= 0:
        return 0
    return max(base_ms, min(MAX_WINDOW_MS, int(recipients * WINDOW_MS_PER_RECIPIENT)))


class EventBatch:
    """The participant events of one loop turn, and who receives which."""

    def __init__(self, window_ms: int = 0) -> None:
        self.events: list[Pending] = []
        self.window_ms = window_ms  # the shortest window; 0: one batch per loop turn
        self.length = window_ms  # the open window's (`window_for` when it opened)
        self.owners_length = window_ms  # the owners' window, for owners-only events
        self.since: int | None = None  # when the open batch began; None: quiet, send at once
        self._everyone = False  # an event for everyone is waiting
        self._tick = 0

    def _length(self) -> int:
        # Events for the owners only (raised hands) never wait longer than the owners' window,
        # even in a window a storm opened for everyone.
        if self.events and not self._everyone:
            return min(self.length, self.owners_length)
        return self.length

    def closes_at(self) -> int | None:
        """When the open batch is due to go out (None: no batch is open)."""
        return None if self.since is None else self.since + self._length()

    def over(self, now_ms: int) -> bool:
        """Whether the open batch's window has passed (a batch of one turn ends by `close`)."""
        length = self._length()
        return length > 0 and self.since is not None and now_ms >= self.since + length

    def open(self, now_ms: int, local: int, owners: int) -> None:
        """A batch begins now, in a room with `local` local participants, `owners` of them
        owners: its window is as long as its events' recipients make it (a storm of raised
        hands, for the owners only, keeps the shortest)."""
        self.since = now_ms
        self.owners_length = window_for(self.window_ms, owners)
        self.length = window_for(self.window_ms, local) if self._everyone else self.owners_length

    def close(self, now_ms: int, local: int, owners: int) -> None:
        """The open batch goes out: a window that had events opens the next one (a storm goes
        on being batched), else the next event goes out at once."""
        if self.events and self.window_ms > 0:
            self.open(now_ms, local, owners)
        else:
            self.since = None

    def tick(self) -> int:
        """The next number of a sequence shared by events and participants becoming local: a
        participant receives the events that came after it."""
        self._tick += 1
        return self._tick

    def add(self, subject: str, frame: bytes, owners_only: bool) -> None:
        self.events.append(Pending(self.tick(), subject, frame, owners_only))
        self._everyone = self._everyone or not owners_only

    def flush(self, local: dict[str, int], owners: Container[str], out: Output) -> None:
        """Send the pending events to `local` (session id -> its tick, in tick order), owners
        included in owners-only events. Recipients that became local meanwhile get only the
        events after that (the rest is in their `joined`)."""
        events = self.events
        if not events:
            return
        self.events = []
        self._everyone = False
        first = events[0].tick
        late: list[tuple[str, int]] = []
        for sid, tick in reversed(local.items()):
            if tick < first:
                break
            late.append((sid, tick))
        everyone = list(local)
        early = everyone[: len(everyone) - len(late)]
        groups: dict[tuple[int, bool], list[str]] = {}
        if any(e.owners_only for e in events):
            groups[(0, True)] = [sid for sid in early if sid in owners]
            groups[(0, False)] = [sid for sid in early if sid not in owners]
        else:
            groups[(0, False)] = early
        ticks = [e.tick for e in events]
        for sid, tick in reversed(late):
            start = bisect.bisect_right(ticks, tick)
            groups.setdefault((start, sid in owners), []).append(sid)
        for (start, owner), recipients in groups.items():
            chosen = [e for e in events[start:] if owner or not e.owners_only]
            if len(chosen) == 1:
                one = chosen[0]
                out.send([sid for sid in recipients if sid != one.subject], one.frame)
            elif chosen:
                # The entries are the single frames' own bytes (each with its "type").
                body = b",".join(e.frame for e in chosen)
                out.send(recipients, b'{"type":"participant-events","events":[' + body + b"]}")
