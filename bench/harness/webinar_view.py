"""What one webinar client knows of its room, built from the server frames it got, and the checks
and sums the webinar study makes of many of them. Pure: bytes and times in, no I/O.

A client's view is right (`View.matches`) when its participant counts, its roster of present
participants and its session data equal what the whole run expects (`Expect`). Rosters are
compared by a fingerprint, (how many, XOR of a 64-bit hash of each session id), so thousands of
clients spread over several load generator processes are checked without shipping rosters
between them: each generator hashes the present participants it joined, the orchestrator XORs
the generators' parts.

Only what the checks need is parsed: an app message (the hot path of a broadcast) by one
`bytes.find`; membership, counts and session frames with orjson.

Latency keys carried in the data the bench writes (monotonic nanoseconds, one clock per host):
a broadcast `{"b": "SEQ:SCHED"}`, a session data write `{"s": "SEQ:SCHED", ...}`, a raised hand
`{"hand": true, "t": SCHED}`.
"""

from __future__ import annotations

import hashlib
import math
from array import array
from dataclasses import dataclass, field
from typing import Any

import orjson

BCAST_MARK = b'"b":"'
SESSION_MARK = b'"s":"'


def sid_hash(sid: str) -> int:
    """A stable 64-bit hash of a session id (the same in every process, unlike `hash`)."""
    return int.from_bytes(hashlib.blake2b(sid.encode(), digest_size=8).digest(), "big")


class SidTable:
    """Session id -> (small index, 64-bit hash), once per process: a view's roster is a bitmap
    over these indices, so thousands of views of thousands of participants stay small."""

    def __init__(self) -> None:
        self._ids: dict[str, tuple[int, int]] = {}

    def get(self, sid: str) -> tuple[int, int]:
        found = self._ids.get(sid)
        if found is None:
            found = self._ids[sid] = (len(self._ids), sid_hash(sid))
        return found


@dataclass(frozen=True)
class Expect:
    """What every view must show once a phase has settled. None: not checked."""

    roster_n: int  # present participants
    roster_x: int  # XOR of their session ids' hashes
    counts: tuple[int, int] | None = None  # (hidden, present); None: the server sends none
    session_seq: int | None = None  # the last session data write (its SEQ)
    hands: int | None = None  # raised hands an owner must have seen
    bcast: int | None = None  # broadcasts a client other than the sender must have got


@dataclass
class Tally:
    """One phase's counters over the views of one generator (`merge` sums generators)."""

    frames: dict[str, int] = field(default_factory=dict)  # server frames received, by type
    errors: dict[str, int] = field(default_factory=dict)  # error frames, by code
    closes: dict[str, int] = field(default_factory=dict)  # unexpected closes, by close code
    unavailable: int = 0  # `unavailable` refusals (retried after retryAfter)
    retries: int = 0  # joins sent again after `unavailable` or a refused connection
    join_failures: int = 0  # clients that never got in (gave up)
    leaks: int = 0  # a hidden participant listed, or its userData shown to a non-owner
    dups: int = 0  # joined for one already present, left for one absent, a message twice
    acks: int = 0
    latency_us: array[int] = field(default_factory=lambda: array("q"))

    def count_frame(self, kind: str) -> None:
        self.frames[kind] = self.frames.get(kind, 0) + 1

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    def close(self, code: int | None) -> None:
        key = str(code)
        self.closes[key] = self.closes.get(key, 0) + 1

    def summary(self) -> dict[str, Any]:
        """The counters as JSON (latencies left to the caller: they travel as a histogram)."""
        return {
            "frames": dict(sorted(self.frames.items())),
            "errors": dict(sorted(self.errors.items())),
            "closes": dict(sorted(self.closes.items())),
            "unavailable": self.unavailable,
            "retries": self.retries,
            "join_failures": self.join_failures,
            "leaks": self.leaks,
            "dups": self.dups,
            "acks": self.acks,
        }


COUNTERS = ("unavailable", "retries", "join_failures", "leaks", "dups", "acks")


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The sum of several `Tally.summary()`s (one per generator)."""
    out: dict[str, Any] = {name: 0 for name in COUNTERS}
    for key in ("frames", "errors", "closes"):
        out[key] = {}
    for part in parts:
        for name in COUNTERS:
            out[name] += part[name]
        for key in ("frames", "errors", "closes"):
            for k, v in part[key].items():
                out[key][k] = out[key].get(k, 0) + v
    for key in ("frames", "errors", "closes"):
        out[key] = dict(sorted(out[key].items()))
    return out


def trouble(totals: dict[str, Any]) -> int:
    """Everything in merged counters that a healthy run never shows: error frames other than
    `unavailable` (counted apart: a retryable refusal is the designed answer to load), unexpected
    closes (4002 fencing and 1008 among them), clients that never got in, leaks, duplicates."""
    errors = sum(v for code, v in totals["errors"].items() if code != "unavailable")
    closes = sum(totals["closes"].values())
    return int(errors + closes + totals["join_failures"] + totals["leaks"] + totals["dups"])


def _key(data: bytes, mark: bytes) -> tuple[int, int] | None:
    """(SEQ, SCHED) of a `"x":"SEQ:SCHED"` key, None if absent."""
    i = data.find(mark)
    if i < 0:
        return None
    j = data.find(b'"', i + len(mark))
    seq, _, sched = data[i + len(mark) : j].partition(b":")
    return int(seq), int(sched)


class View:
    """One client's room as its frames built it."""

    __slots__ = ("acks", "bcast", "bcast_got", "changed_ns", "counts", "hands", "hands_n",
                 "hidden", "ids", "owner", "roster", "roster_n", "roster_x", "session_seq",
                 "sid")  # fmt: skip

    def __init__(self, ids: SidTable, owner: bool = False, hidden: bool = False) -> None:
        self.ids = ids
        self.owner = owner
        self.hidden = hidden
        self.sid = ""
        self.roster = bytearray()  # bit per SidTable index: present as this client sees it
        self.roster_n = 0
        self.roster_x = 0
        self.counts: tuple[int, int] | None = None
        self.session_seq = -1
        self.hands = bytearray()  # owners: SidTable indices whose hand it saw raised
        self.hands_n = 0
        self.bcast = bytearray()  # broadcast SEQs received
        self.bcast_got = 0
        self.changed_ns = 0  # when the roster, the counts or the session data last changed
        self.acks = 0  # acks this client got

    # -- the checks --

    def matches(self, e: Expect) -> bool:
        if self.roster_n != e.roster_n or self.roster_x != e.roster_x:
            return False
        if e.counts is not None and self.counts != e.counts:
            return False
        if e.session_seq is not None and self.session_seq != e.session_seq:
            return False
        if e.hands is not None and self.owner and self.hands_n != e.hands:
            return False
        return e.bcast is None or self.bcast_got == e.bcast

    # -- frames in --

    def apply(self, data: bytes, now_ns: int, tally: Tally) -> int | None:
        """Take one server frame. Returns the `retryAfter` (ms) of an `unavailable` error, else
        None. Latencies of the bench's keys go into `tally.latency_us`."""
        if data.startswith(b'{"type":"app-message"'):
            tally.count_frame("app-message")
            key = _key(data, BCAST_MARK)
            if key is not None:
                self._broadcast(key, now_ns, tally)
            return None
        frame = orjson.loads(data)
        kind = frame.get("type", "?")
        tally.count_frame(kind)
        if kind == "ack":
            tally.acks += 1
            self.acks += 1
        elif kind in ("participant-joined", "participant-updated", "participant-left"):
            self._event(frame, now_ns, tally)
        elif kind == "participant-events":
            for entry in frame["events"]:
                if entry["participant"]["session_id"] != self.sid:  # its own: skipped (spec)
                    self._event(entry, now_ns, tally)
        elif kind == "participant-counts-updated":
            self._counts(frame["participantCounts"], now_ns)
        elif kind == "participants-page":
            self._page(frame["participants"], tally)
            self.changed_ns = now_ns
        elif kind == "meeting-session-state-updated":
            self._session(frame["meetingSessionState"]["data"], now_ns, tally)
        elif kind == "joined":
            self.joined(frame, now_ns, tally)
        elif kind == "error":
            code = frame.get("code", "?")
            tally.error(code)
            if code == "unavailable":
                tally.unavailable += 1
                retry = frame.get("retryAfter")
                return int(retry) if isinstance(retry, int | float) else 0
        return None

    def joined(self, frame: dict[str, Any], now_ns: int, tally: Tally) -> None:
        self.sid = frame["sessionId"]
        self.roster, self.roster_n, self.roster_x = bytearray(), 0, 0
        self._page(frame["participants"], tally)
        counts = frame.get("participantCounts")
        if counts is not None:
            self._counts(counts, now_ns)
        data = (frame.get("meetingSessionState") or {}).get("data") or {}
        self._session(data, now_ns, tally)
        self.changed_ns = now_ns

    def _page(self, participants: dict[str, Any], tally: Tally) -> None:
        """Participants of `joined` or of a ``participants-page`` after it."""
        for sid, p in participants.items():
            if sid == self.sid and self.hidden:
                continue  # its own entry: it is no part of the roster others see
            if _is_hidden(p):
                tally.leaks += 1
            self._add(sid, tally)

    def _event(self, frame: dict[str, Any], now_ns: int, tally: Tally) -> None:
        kind, p = frame["type"], frame["participant"]
        if kind == "participant-updated":
            user_data = p.get("userData")
            if _is_hidden(p) and not self.owner:
                tally.leaks += 1  # only owners hear of a hidden participant's userData
                return
            if isinstance(user_data, dict) and user_data.get("hand") is True:
                if not self.owner:
                    tally.leaks += 1  # only hidden participants raise hands here
                    return
                index, _ = self.ids.get(p["session_id"])
                if index >= len(self.hands):
                    self.hands.extend(bytes(index + 1024 - len(self.hands)))
                if not self.hands[index]:
                    self.hands[index] = 1
                    self.hands_n += 1
                    self.changed_ns = now_ns
                    if isinstance(user_data.get("t"), int):
                        tally.latency_us.append((now_ns - user_data["t"]) // 1000)
            return
        if _is_hidden(p):
            tally.leaks += 1
            return
        if kind == "participant-joined":
            self._add(p["session_id"], tally)
        else:
            self._remove(p["session_id"], tally)
        self.changed_ns = now_ns

    def _add(self, sid: str, tally: Tally) -> None:
        index, h = self.ids.get(sid)
        if index >= len(self.roster):
            self.roster.extend(bytes(index + 1024 - len(self.roster)))
        if self.roster[index]:
            tally.dups += 1
            return
        self.roster[index] = 1
        self.roster_n += 1
        self.roster_x ^= h

    def _remove(self, sid: str, tally: Tally) -> None:
        index, h = self.ids.get(sid)
        if index >= len(self.roster) or not self.roster[index]:
            tally.dups += 1
            return
        self.roster[index] = 0
        self.roster_n -= 1
        self.roster_x ^= h

    def _counts(self, counts: dict[str, Any], now_ns: int) -> None:
        self.counts = (int(counts["hidden"]), int(counts["present"]))
        self.changed_ns = now_ns

    def _session(self, data: dict[str, Any], now_ns: int, tally: Tally) -> None:
        key = data.get("s")
        if not isinstance(key, str):
            return
        seq_text, _, sched_text = key.partition(":")
        seq, sched = int(seq_text), int(sched_text)
        if seq <= self.session_seq:
            return
        # The writes this value supersedes reach this client now too (batching keeps the
        # newest): their latency ends here, as bench.harness.loadgen counts them.
        tally.latency_us.append((now_ns - sched) // 1000)
        self.session_seq = seq
        self.changed_ns = now_ns

    def _broadcast(self, key: tuple[int, int], now_ns: int, tally: Tally) -> None:
        seq, sched = key
        if seq >= len(self.bcast):
            self.bcast.extend(bytes(seq + 256 - len(self.bcast)))
        if self.bcast[seq]:
            tally.dups += 1
            return
        self.bcast[seq] = 1
        self.bcast_got += 1
        self.changed_ns = now_ns
        tally.latency_us.append((now_ns - sched) // 1000)


def _is_hidden(p: dict[str, Any]) -> bool:
    permissions = p.get("permissions")
    return isinstance(permissions, dict) and permissions.get("hasPresence") is False


def fingerprint(sids: list[str]) -> tuple[int, int]:
    """(how many, XOR of their hashes): a roster's fingerprint, as `View` keeps it."""
    x = 0
    for sid in sids:
        x ^= sid_hash(sid)
    return len(sids), x


def combine(parts: list[tuple[int, int]]) -> tuple[int, int]:
    """The fingerprint of the union of disjoint rosters."""
    n, x = 0, 0
    for pn, px in parts:
        n += pn
        x ^= px
    return n, x


def growth_exponent(sizes: list[int], values: list[float | None]) -> float | None:
    """k in value ~ size^k: the least-squares slope of log(value) on log(size) (1: linear, 2:
    quadratic). None with fewer than two sizes that have a positive value."""
    pts = [
        (math.log(n), math.log(v))
        for n, v in zip(sizes, values, strict=True)
        if n > 0 and v is not None and v > 0
    ]
    if len(pts) < 2 or len({x for x, _ in pts}) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    num = sum((x - mx) * (y - my) for x, y in pts)
    den = sum((x - mx) ** 2 for x, _ in pts)
    return round(num / den, 2)
