"""Who a replica's participants are, as the wire shows them: encodings, who is listed, counts.

A hidden participant (a meeting token with ``p: {"hp": false}``: Daily's ``hasPresence: false``)
has ``"hidden": true`` in its info register. It is in the room (it receives, sends and writes)
but is never listed to others: not in `joined`, not in REST presence, no join or leave event.

The `Roster` keeps, for one replica, the listed (present, not hidden) and the hidden session ids
and each participant's encoding, so that neither the counts nor a `joined` frame cost a walk
over every participant or a re-encoding of the roster: the room tells it what each step changed
(`track`, `touched`). If the replica changed in a way it was not told of (its
`membership_version` moved on), the next read walks once.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from itertools import chain
from typing import Any

import orjson

from roomstate.crdt import RoomState
from roomstate.crdt.hlc import Stamp
from roomstate.crdt.room import Participant

__all__ = ["Roster", "is_hidden", "paginate"]


def is_hidden(participant: Participant) -> bool:
    """Whether a present participant joined without presence (not listed to others)."""
    info = participant.info
    return info is not None and isinstance(info.value, dict) and info.value.get("hidden") is True


def paginate(parts: Iterable[bytes], limit: int) -> list[bytes]:
    """Object members (``"sid":{...}``) as JSON objects of at most `limit` bytes each, in
    order; a member over the limit by itself is a page of its own."""
    pages: list[bytes] = []
    page: list[bytes] = []
    size = 2
    for part in parts:
        if page and size + len(part) + 1 > limit:
            pages.append(b"{" + b",".join(page) + b"}")
            page, size = [], 2
        page.append(part)
        size += len(part) + 1
    pages.append(b"{" + b",".join(page) + b"}")
    return pages


class Roster:
    """One replica's participants as the wire shows them, kept up to date step by step."""

    def __init__(self, state: RoomState) -> None:
        self.state = state
        self._version = -1  # the state's membership_version the two sets below are of
        self._listed: set[str] = set()  # present participants that are not hidden
        self._hidden: set[str] = set()  # present hidden participants
        # sid -> (info stamp, userData stamp, its encoding): valid while the stamps are
        self._encoded: dict[str, tuple[Stamp | None, Stamp | None, bytes]] = {}
        # The `joined` listing, kept step by step: a join in a storm costs a sorted insert and
        # one join of bytes, not an encoding or a lookup per listed participant.
        self._order: list[str] = []  # the listed session ids, sorted (as encode_state sorts)
        self._parts: dict[str, bytes] = {}  # listed sid -> '"sid":{...}', once made
        self._unmade: set[str] = set()  # listed sids whose part is missing or out of date
        self._listing: bytes | None = None  # the listed ones' parts as one JSON object

    # -- reads --

    def participant(self, session_id: str) -> dict[str, Any]:
        """A participant as the wire protocol shows it."""
        p = self.state.participants[session_id]
        info = p.info.value if p.info is not None else {}
        shown: dict[str, Any] = {
            "session_id": session_id,
            "user_id": info.get("user_id", session_id),
            "user_name": info.get("user_name", ""),
            "userData": p.user_data.value if p.user_data is not None else None,
            "joined_at": info.get("joined_at"),
            "owner": bool(info.get("owner", False)),
        }
        if info.get("hidden") is True:
            shown["permissions"] = {"hasPresence": False}
        return shown

    def encoded(self, session_id: str) -> bytes:
        """`participant` as JSON with sorted keys, kept until its info or userData changes."""
        p = self.state.participants[session_id]
        stamps = (
            p.info.stamp if p.info is not None else None,
            p.user_data.stamp if p.user_data is not None else None,
        )
        cached = self._encoded.get(session_id)
        if cached is not None and cached[:2] == stamps:
            return cached[2]
        encoded = orjson.dumps(self.participant(session_id), option=orjson.OPT_SORT_KEYS)
        self._encoded[session_id] = (*stamps, encoded)
        return encoded

    def hidden(self, session_id: str) -> bool:
        self._sync()
        return session_id in self._hidden

    def counts(self) -> dict[str, int]:
        """``{"hidden": H, "present": P}``: the present participants, hidden or not."""
        self._sync()
        return {"hidden": len(self._hidden), "present": len(self._listed)}

    def listed(self) -> dict[str, dict[str, Any]]:
        """The listed participants (present, not hidden) by session id, in join order."""
        self._sync()
        listed = self._listed
        return {sid: self.participant(sid) for sid in self.state.participants if sid in listed}

    def listing(self, session_id: str) -> bytes:
        """The ``participants`` object of the `joined` frame for `session_id`, as the bytes
        `encode_state` gives it: the listed participants, and the joiner itself if hidden.
        Built from the kept encodings; the whole object is kept until a listed one changes."""
        self._sync()
        parts, order = self._parts, self._order
        for sid in self._unmade:
            parts[sid] = self._part(sid)
        self._unmade.clear()
        if session_id in self._hidden:
            at = bisect.bisect(order, session_id)
            own = [self._part(session_id)]
            body = chain(
                map(parts.__getitem__, order[:at]), own, map(parts.__getitem__, order[at:])
            )
            return b"{" + b",".join(body) + b"}"
        if self._listing is None:
            self._listing = b"{" + b",".join(map(parts.__getitem__, order)) + b"}"
        return self._listing

    def pages(self, session_id: str, limit: int) -> list[bytes]:
        """`listing`, in pages of at most `limit` bytes (one page if it fits); a hidden
        joiner's own entry is on the first."""
        listing = self.listing(session_id)
        if len(listing) <= limit:
            return [listing]
        parts = [self._parts[sid] for sid in self._order]
        if session_id in self._hidden:
            parts.insert(0, self._part(session_id))
        return paginate(parts, limit)

    # -- what changed --

    def track(self, version_before: int, joined: list[str], left: list[str]) -> None:
        """Follow a step that made `joined` present and removed `left`, starting from
        `version_before` (the state's membership_version before it), without a walk."""
        for sid in left:
            self._encoded.pop(sid, None)
        if self._version != version_before:
            return  # behind already: the next read walks
        for sid in left:
            if sid in self._listed:
                self._listed.discard(sid)
                self._unlist(sid)
            self._hidden.discard(sid)
        participants = self.state.participants
        for sid in joined:
            p = participants.get(sid)
            if p is None or not p.present:
                continue
            if is_hidden(p):
                self._hidden.add(sid)
            elif sid not in self._listed:
                self._listed.add(sid)
                bisect.insort(self._order, sid)
                self._unmade.add(sid)
                self._listing = None
        self._version = self.state.membership_version

    def touched(self, session_id: str) -> None:
        """A participant's userData changed."""
        if session_id in self._listed:
            self._unmade.add(session_id)
            self._listing = None

    # -- internals --

    def _part(self, session_id: str) -> bytes:
        return orjson.dumps(session_id) + b":" + self.encoded(session_id)

    def _unlist(self, session_id: str) -> None:
        order = self._order
        at = bisect.bisect_left(order, session_id)
        if at < len(order) and order[at] == session_id:
            del order[at]
        self._parts.pop(session_id, None)
        self._unmade.discard(session_id)
        self._listing = None

    def _sync(self) -> None:
        state = self.state
        if self._version == state.membership_version:
            return
        listed: set[str] = set()
        hidden: set[str] = set()
        for sid, p in state.participants.items():
            if p.present:
                (hidden if is_hidden(p) else listed).add(sid)
        self._listed, self._hidden = listed, hidden
        for sid in [sid for sid in self._encoded if sid not in listed and sid not in hidden]:
            del self._encoded[sid]
        self._version = state.membership_version
        self._order, self._parts, self._unmade = sorted(listed), {}, set(listed)
        self._listing = None

    def resume_digest(self, session_id: str) -> str | None:
        """The digest of the participant's resume secret, if it is present and has one."""
        participant = self.state.participants.get(session_id)
        if participant is None or participant.info is None:
            return None
        digest = participant.info.value.get("resume")
        return digest if isinstance(digest, str) else None
